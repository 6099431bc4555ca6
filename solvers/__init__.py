"""Solver back ends (MILP, LP, bilinear).  Filled by the solver issue; empty for now."""
