"""The ``boundflow`` command line: one module per subcommand (``demo``, ``train``, ``verify``
for verify and vnncomp, ``pointcloud`` for certify-pointcloud, ``bench``), each parsing its
options and calling the library; ``options`` for the option definitions they share (one name
per concept) and ``main`` for the common options, the error contract and the dispatch."""

from boundflow.cli.main import build_parser, main
from boundflow.cli.verify import EXIT_INPUT_ERROR, EXIT_SAT, EXIT_UNDECIDED, EXIT_UNSAT

__all__ = ["main", "build_parser", "EXIT_UNSAT", "EXIT_SAT", "EXIT_INPUT_ERROR", "EXIT_UNDECIDED"]
