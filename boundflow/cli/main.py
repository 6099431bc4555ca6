"""The ``boundflow`` command: its parser (shared options, defaults in help), the one-line error
contract and the dispatch to the subcommands' modules (thin: they parse options and call the
library)."""

from __future__ import annotations

import argparse
import sys
import time

from boundflow.cli import bench as bench_cli
from boundflow.cli import demo as demo_cli
from boundflow.cli import pointcloud as pointcloud_cli
from boundflow.cli import train as train_cli
from boundflow.cli import verify as verify_cli
from boundflow.cli.verify import EXIT_INPUT_ERROR

__all__ = ["main", "build_parser"]


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default unless its help already states it (or there is none)."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if "default" in h or d in (None, [], argparse.SUPPRESS) or isinstance(d, bool) or not action.option_strings:
            return h
        return f"{h} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, ``boundflow: error: ...`` (``--help`` shows the usage)."""

    def error(self, message):
        where = self.prog.removeprefix("boundflow").strip()
        self.exit(EXIT_INPUT_ERROR, f"boundflow: error: {where + ': ' if where else ''}{message}\n")


def _global_options(p: argparse.ArgumentParser) -> None:
    """Options every subcommand takes (before or after its name)."""
    g = p.add_argument_group("common options")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="full tracebacks on errors")
    g.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars, warnings only"
    )
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log what is done")
    g.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="torch CPU threads (default: torch's choice)")


def build_parser() -> argparse.ArgumentParser:
    """The ``boundflow`` argument parser (every subcommand; defaults shown in ``--help``)."""
    import boundflow

    parser = _Parser(
        prog="boundflow",
        description="Deterministic bound propagation for PyTorch.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"boundflow {boundflow.__version__}")
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    demo_cli.add_parser(sub)
    train_cli.add_parser(sub)
    verify_cli.add_parsers(sub)
    pointcloud_cli.add_parser(sub)
    bench_cli.add_parser(sub)
    for p in _all_subparsers(sub):
        p.formatter_class = _HelpFormatter
        writes = any("--out" in a.option_strings for a in p._actions)
        if writes and p.prog not in (
            "boundflow vnncomp",
            "boundflow verify",
            "boundflow bench",
        ):  # (vnncomp resumes its folder; verify --out is one file)
            p.add_argument("--force", action="store_true", help="replace the results of a previous run in --out")
        _global_options(p)
    return parser


def _all_subparsers(sub) -> list[argparse.ArgumentParser]:
    out = []
    for p in sub.choices.values():
        out.append(p)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                out += _all_subparsers(action)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run ``boundflow`` with ``argv`` (default: the command line).  A user error (bad option,
    missing file, invalid data) prints one line ``boundflow: error: ...`` to stderr and returns
    2, before any expensive work where it can be checked up front; ``--debug`` shows the full
    traceback instead."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # a usage error, already printed as one line (--help, --version: 0)
        if e.code == EXIT_INPUT_ERROR:
            return EXIT_INPUT_ERROR
        raise
    args.debug = getattr(args, "debug", False)
    args.quiet = getattr(args, "quiet", False)
    args.verbose = getattr(args, "verbose", False)
    if args.quiet and hasattr(args, "no_progress"):
        args.no_progress = True
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            return _user_error(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    import logging
    import warnings

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="boundflow: %(message)s")
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for reproducible result records
    args.start = verify_cli.START if argv is None else time.monotonic()  # a command line counts its start-up
    from boundflow.errors import BoundFlowError, JobError

    try:
        with warnings.catch_warnings():
            if args.quiet:
                warnings.simplefilter("ignore")
            return _dispatch(args, argv, parser)
    except SystemExit as e:
        if isinstance(e.code, str):  # the subcommands' checks: SystemExit("error: ...")
            if args.debug:
                raise
            return _user_error(e.code.removeprefix("error: "))
        raise
    except (BoundFlowError, ValueError, OSError) as e:
        if args.debug:
            raise
        if isinstance(e, JobError):  # a library job's check: its settings named as options
            return _user_error(e.as_options())
        return _user_error(str(e) or type(e).__name__)
    except KeyboardInterrupt:
        print("boundflow: interrupted", file=sys.stderr)
        return 130


def _user_error(message: str) -> int:
    print(f"boundflow: error: {message}", file=sys.stderr)
    return EXIT_INPUT_ERROR


def _dispatch(args, argv, parser) -> int:
    if args.command == "demo":
        return demo_cli.run(args)
    if args.command == "verify":
        return verify_cli.run_verify(args, argv)
    if args.command == "vnncomp":
        return verify_cli.run_vnncomp(args)
    if args.command == "train":
        return train_cli.run(args)
    if args.command == "certify-pointcloud":
        return pointcloud_cli.run(args)
    if args.command == "bench":
        return bench_cli.run(args)
    parser.print_help(sys.stderr)
    return 2
