"""The linear-relaxation domain: CROWN/DeepPoly back-substitution, alpha-CROWN, forward mode."""

from boundflow.domains.linear.crown import EMPTY_TOLERANCE, BoundState, crown, prepare
from boundflow.domains.linear.domain import AlphaCrownDomain, CrownDomain, ForwardDomain, LinearPrepared

__all__ = [
    "EMPTY_TOLERANCE",
    "AlphaCrownDomain",
    "BoundState",
    "CrownDomain",
    "ForwardDomain",
    "LinearPrepared",
    "crown",
    "prepare",
]
