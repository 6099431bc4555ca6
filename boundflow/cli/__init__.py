"""The ``boundflow`` command line: one module per subcommand family (``verify`` for verify and
vnncomp, ``demo``; train, bench and certify-pointcloud live next to their libraries in
``boundflow.train.cli``, ``boundflow.bench.cli``, ``boundflow.pointcloud.cli``) and ``main`` for
the shared options, the error contract and the dispatch."""

from boundflow.cli.main import build_parser, main
from boundflow.cli.verify import EXIT_INPUT_ERROR, EXIT_SAT, EXIT_UNDECIDED, EXIT_UNSAT

__all__ = ["main", "build_parser", "EXIT_UNSAT", "EXIT_SAT", "EXIT_INPUT_ERROR", "EXIT_UNDECIDED"]
