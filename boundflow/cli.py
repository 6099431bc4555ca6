"""The ``boundflow`` command (thin: parses options, calls the library)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _process_start() -> float:
    """``time.monotonic()`` at this process's start (Linux: from /proc), else now."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        elapsed = uptime - ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(0.0, elapsed)
    except (OSError, ValueError, IndexError):
        return time.monotonic()


_START = _process_start()  # interpreter start and imports count against `verify --timeout`

# exit codes of `boundflow verify` (documented in docs/verify.md)
EXIT_UNSAT, EXIT_SAT, EXIT_INPUT_ERROR, EXIT_UNDECIDED = 0, 10, 2, 20


def _check_writable(path: str) -> str | None:
    """Why ``path`` cannot be written (before any work), or None."""
    p = Path(path)
    if p.is_dir():
        return f"--out {path} is a folder"
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        return f"--out {path}: folder {parent} does not exist"
    if not os.access(parent, os.W_OK):
        return f"--out {path}: folder {parent} is not writable"
    return None


def _run_verify(args) -> int:
    from boundflow.errors import BoundFlowError

    if not args.timeout > 0:
        print(f"boundflow: error: verify: --timeout must be > 0 seconds, got {args.timeout}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    for what, path in (("onnx", args.onnx), ("vnnlib", args.vnnlib)):
        if not Path(path).is_file():
            print(f"boundflow: error: verify: {what} file {path}: no such file", file=sys.stderr)
            return EXIT_INPUT_ERROR
    if args.out and (why := _check_writable(args.out)):
        print(f"boundflow: error: verify: {why}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    executor, why = _executor(args, "verify")
    if why:
        print(why, file=sys.stderr)
        return EXIT_INPUT_ERROR
    try:
        from boundflow.atomic import atomic_write_text
        from boundflow.verify import verify

        with _clock(args.timeout, args.start, enabled=not (args.no_progress or args.quiet)):
            res = verify(args.onnx, args.vnnlib, timeout=args.timeout, start=args.start, executor=executor)
    except (BoundFlowError, FileNotFoundError, ValueError) as e:
        print(f"boundflow: error: verify: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    finally:
        if executor is not None:
            executor.close()
    print(f"{res.status}  ({time.monotonic() - args.start:.2f} s, {res.boxes} boxes)")
    for note in res.notes:
        print(f"  note: {note}")
    if args.out:
        atomic_write_text(args.out, res.vnncomp())
    return {"unsat": EXIT_UNSAT, "sat": EXIT_SAT}.get(res.status, EXIT_UNDECIDED)


class _clock:
    """A progress bar of the time spent against ``--timeout`` (stderr, terminals only), updated
    twice a second from a thread while the verification runs."""

    def __init__(self, timeout: float, start: float, enabled: bool = True):
        self.timeout, self.start = timeout, start
        self.enabled = enabled and sys.stderr.isatty()

    def __enter__(self):
        if self.enabled:
            import threading

            from tqdm import tqdm

            self.bar = tqdm(total=round(self.timeout, 1), desc="verify", unit="s", leave=False)
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._tick, daemon=True)
            self.thread.start()
        return self

    def _tick(self):
        while not self.stop.wait(0.5):
            self.bar.n = round(min(time.monotonic() - self.start, self.timeout), 1)
            self.bar.refresh()

    def __exit__(self, *exc):
        if self.enabled:
            self.stop.set()
            self.thread.join()
            self.bar.close()
        return False


def _run_vnncomp(args) -> int:
    from boundflow.errors import BoundFlowError
    from boundflow.verify.vnncomp import run_benchmark

    executor, why = _executor(args, "vnncomp")
    if why:
        print(why, file=sys.stderr)
        return EXIT_INPUT_ERROR
    try:
        rows = run_benchmark(
            args.instances,
            args.out,
            timeout_factor=args.timeout_factor,
            progress=True,
            executor=executor,
            parallel=args.parallel,
        )
    except BoundFlowError as e:
        print(f"boundflow: error: vnncomp: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    finally:
        if executor is not None:
            executor.close()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["result"]] = counts.get(r["result"], 0) + 1
    print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())) + f"  -> {Path(args.out) / 'results.csv'}")
    return 0


def _add_parallel_options(p) -> None:
    p.add_argument("--workers", type=int, default=1, help="worker processes for branch and bound (default: 1, serial)")
    p.add_argument(
        "--executor", default="process", choices=["process", "ray"], help="where the workers run (default: process)"
    )
    p.add_argument("--address", default=None, help="Ray cluster address for --executor ray (default: a local Ray)")


def _executor(args, command: str):
    """The executor the parallel options ask for (``None``: serial), or an error message."""
    if args.workers < 1:
        return None, f"boundflow: error: {command}: --workers must be >= 1, got {args.workers}"
    if args.workers == 1 and args.executor == "process":
        return None, None
    from solvers.executor import make_executor

    try:
        return make_executor(args.executor, args.workers, args.address), None
    except ImportError as e:
        return None, f"boundflow: error: {command}: {e}"


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default unless its help already states it (or there is none)."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if "default" in h or d in (None, False, argparse.SUPPRESS) or not action.option_strings:
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
    demo = sub.add_parser("demo", help="bound a small model's outputs and gradients on interval data")
    demo.add_argument(
        "--eps", "--epsilon", dest="eps", type=float, default=0.05, help="input perturbation (l-infinity radius)"
    )
    demo.add_argument("--param-radius", type=float, default=0.01, help="parameter interval radius")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="results", help="folder for the demo's plots")
    from boundflow.train.cli import add_train_parser

    add_train_parser(sub)
    ver = sub.add_parser("verify", help="verify an ONNX model against a VNN-LIB property")
    ver.add_argument("onnx")
    ver.add_argument("vnnlib")
    ver.add_argument("--timeout", type=float, default=60.0, help="seconds, start-up included")
    ver.add_argument("--out", default=None, help="write the VNN-COMP result file here")
    ver.add_argument("--no-progress", action="store_true", help="no progress bar (time spent against --timeout)")
    _add_parallel_options(ver)
    comp = sub.add_parser("vnncomp", help="run a VNN-COMP instances.csv (onnx,vnnlib,timeout) as the competition does")
    comp.add_argument("instances", help="instances CSV; paths relative to it, .gz allowed")
    comp.add_argument("--out", default="vnncomp_results", help="folder for results.csv and per-instance results")
    comp.add_argument("--timeout-factor", type=float, default=1.0, help="scale every instance's timeout")
    _add_parallel_options(comp)
    comp.add_argument(
        "--parallel",
        default="subdomains",
        choices=["subdomains", "instances"],
        help="what the workers share: one instance's sub-domains, or whole instances",
    )
    from boundflow.pointcloud.cli import add_parser as add_pointcloud_parser

    add_pointcloud_parser(sub)
    from boundflow.bench.cli import add_parser as add_bench_parser

    add_bench_parser(sub)
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
    args.start = _START if argv is None else time.monotonic()  # a command line counts its start-up
    from boundflow.errors import BoundFlowError

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
        return _user_error(str(e) or type(e).__name__)
    except KeyboardInterrupt:
        print("boundflow: interrupted", file=sys.stderr)
        return 130


def _user_error(message: str) -> int:
    print(f"boundflow: error: {message}", file=sys.stderr)
    return EXIT_INPUT_ERROR


def _dispatch(args, argv, parser) -> int:
    if args.command == "demo":
        from boundflow.demo import OUTPUTS, run_demo
        from boundflow.outputs import claim, record

        if not args.eps > 0:
            raise SystemExit(f"error: --eps must be > 0 (an l-infinity radius), got {args.eps}")
        if not args.param_radius >= 0:
            raise SystemExit(f"error: --param-radius must be >= 0, got {args.param_radius}")
        record(claim(args.out, OUTPUTS, force=args.force), args.argv)
        return run_demo(eps=args.eps, param_radius=args.param_radius, seed=args.seed, out_dir=args.out)
    if args.command == "verify":
        rc = _run_verify(args)
        if argv is None:  # a command line: skip the interpreter's teardown (torch, onnxruntime) so
            sys.stdout.flush()  # the answer arrives within --timeout; results are already written
            sys.stderr.flush()
            os._exit(rc)
        return rc
    if args.command == "vnncomp":
        return _run_vnncomp(args)
    if args.command == "train":
        from boundflow.train.cli import run_train

        return run_train(args)
    if args.command == "certify-pointcloud":
        from boundflow.pointcloud.cli import run as run_pointcloud

        return run_pointcloud(args)
    if args.command == "bench":
        from boundflow.bench.cli import run as run_bench

        return run_bench(args)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
