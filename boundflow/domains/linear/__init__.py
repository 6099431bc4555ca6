"""The linear-relaxation domain: CROWN/DeepPoly back-substitution and alpha-CROWN."""

from boundflow.domains.linear.crown import BoundState, crown, prepare
from boundflow.domains.linear.domain import AlphaCrownDomain, CrownDomain, ForwardDomain

__all__ = ["AlphaCrownDomain", "BoundState", "CrownDomain", "ForwardDomain", "crown", "prepare"]
