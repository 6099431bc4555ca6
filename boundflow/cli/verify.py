"""``boundflow verify`` and ``boundflow vnncomp``: options, exit codes and runners."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from boundflow.cli import options

__all__ = ["add_parsers", "run_verify", "run_vnncomp", "EXIT_UNSAT", "EXIT_SAT", "EXIT_INPUT_ERROR", "EXIT_UNDECIDED"]


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


START = _process_start()  # interpreter start and imports count against `verify --timeout`

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
    from boundflow.atomic import atomic_write_text

    answered = threading.Lock()  # held by whoever writes the one answer

    def give(status: str, text: str, notes=(), boxes: int = 0) -> int:
        print(f"{status}  ({time.monotonic() - args.start:.2f} s, {boxes} boxes)")
        for note in notes:
            print(f"  note: {note}")
        if args.out:
            atomic_write_text(args.out, text)
        return {"unsat": EXIT_UNSAT, "sat": EXIT_SAT}.get(status, EXIT_UNDECIDED)

    if getattr(args, "hard_deadline", False):
        _watchdog(args.start + args.timeout + WATCHDOG_GRACE, answered, give)
    try:
        from boundflow.verify import verify

        with _clock(args.timeout, args.start, enabled=not (args.no_progress or args.quiet)):
            res = verify(args.onnx, args.vnnlib, timeout=args.timeout, start=args.start, executor=executor)
    except (BoundFlowError, FileNotFoundError, ValueError) as e:
        if not answered.acquire(blocking=False):
            _wait_forever()
        print(f"boundflow: error: verify: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    finally:
        if executor is not None:
            executor.close()
    if not answered.acquire(blocking=False):  # the watchdog is answering: it ends the process
        _wait_forever()
    return give(res.status, res.vnncomp(), res.notes, res.boxes)


# the watchdog answers `timeout` this long after --timeout if the verification has not answered
# (the competition accepts answers up to the timeout plus a small grace; the promise is 2 s)
WATCHDOG_GRACE = 1.0


def _watchdog(at: float, answered, give) -> None:
    """A thread that, at ``at`` (``time.monotonic()``), answers ``timeout`` and ends the process
    unless the main thread has answered: a bound call that cannot be interrupted (graph capture
    of a huge network, one long kernel) cannot make the answer late."""

    def fire():
        time.sleep(max(0.0, at - time.monotonic()))
        if not answered.acquire(blocking=False):
            return  # the main thread answered
        rc = EXIT_UNDECIDED
        try:
            rc = give("timeout", "timeout\n", ["the verification did not finish in time; stopped by the watchdog"])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)

    threading.Thread(target=fire, daemon=True, name="boundflow-watchdog").start()


def _wait_forever() -> None:
    while True:  # the watchdog thread is writing the answer and will end the process
        time.sleep(1.0)


def limit_memory(fraction: float = 0.85) -> int | None:
    """Cap this process's address space at ``fraction`` of the machine's memory (Linux), so a
    bound that would need more fails with an allocation error (answered ``unknown`` with a
    note) instead of the kernel killing the process.  Returns the limit in bytes, or ``None``
    where it cannot be read or set."""
    try:
        import resource

        with open("/proc/meminfo") as f:
            total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
        limit = int(total * fraction)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft <= limit:
            return soft
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        return limit
    except (OSError, ValueError, StopIteration, ImportError):
        return None


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


def add_parsers(sub) -> None:
    ver = sub.add_parser("verify", help="verify an ONNX model against a VNN-LIB property")
    ver.add_argument("onnx")
    ver.add_argument("vnnlib")
    ver.add_argument("--timeout", type=float, default=60.0, help="seconds, start-up included")
    options.out(ver, None, "write the VNN-COMP result file here")
    options.no_progress(ver, "no progress bars (the bar shows the time spent against --timeout)")
    options.parallel(ver, "branch and bound")
    comp = sub.add_parser("vnncomp", help="run a VNN-COMP instances.csv (onnx,vnnlib,timeout) as the competition does")
    comp.add_argument("instances", help="instances CSV; paths relative to it, .gz allowed")
    options.out(comp, "vnncomp_results", "folder for results.csv and per-instance results")
    comp.add_argument("--timeout-factor", type=float, default=1.0, help="scale every instance's timeout")
    options.parallel(comp, "branch and bound (or whole instances, --parallel instances)")
    comp.add_argument(
        "--parallel",
        default="subdomains",
        choices=["subdomains", "instances"],
        help="what the workers share: one instance's sub-domains, or whole instances",
    )


def run_verify(args, argv) -> int:
    if argv is None:  # a command line: the answer is guaranteed in time, and memory is capped
        args.hard_deadline = True
        limit_memory()
    rc = _run_verify(args)
    if argv is None:  # a command line: skip the interpreter's teardown (torch, onnxruntime) so
        sys.stdout.flush()  # the answer arrives within --timeout; results are already written
        sys.stderr.flush()
        os._exit(rc)
    return rc


def run_vnncomp(args) -> int:
    return _run_vnncomp(args)
