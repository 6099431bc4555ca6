"""The interval (box) domain: ``IntervalTensor`` and its ATen rule table.

Importing this package fills :data:`RULES`.  Register more rules with :func:`implements`.
"""

from boundflow.domains.interval import (  # noqa: F401  (imports register the rules)
    rules_activation,
    rules_arith,
    rules_compare,
    rules_linear,
    rules_loss,
    rules_pooling,
    rules_reduction,
    rules_shape,
    rules_softmax,
)
from boundflow.domains.interval.table import RULES, implements
from boundflow.domains.interval.tensor import IntervalTensor, lohi, make

__all__ = ["IntervalTensor", "RULES", "implements", "lohi", "make"]
