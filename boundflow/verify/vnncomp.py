"""Run a VNN-COMP benchmark folder the way the competition does.

``boundflow vnncomp INSTANCES.csv`` reads the competition's header-less
``onnx,vnnlib,timeout`` rows (paths relative to the CSV file, ``.gz`` allowed; a header row and
a fourth ``expected`` column, as in ``../shared``, are accepted too), verifies every instance
with its timeout, writes one VNN-COMP result file per instance and a results CSV in the
competition's columns (``benchmark,onnx,vnnlib,prepare_time,result,run_time``), and resumes
where a previous run stopped: instances already in the results CSV are skipped.  An answer
given after the timeout is recorded as ``timeout``, as the competition scores it.
"""

from __future__ import annotations

import csv
import io
import re
import time
from dataclasses import dataclass
from pathlib import Path

from boundflow.errors import BoundFlowError

__all__ = ["Instance", "read_instances", "run_benchmark", "COLUMNS", "PARALLEL"]

# the competition's columns, then the sub-domains (boxes) the search bounded (empty if unknown)
COLUMNS = ["benchmark", "onnx", "vnnlib", "prepare_time", "result", "run_time", "domains"]
PARALLEL = ("subdomains", "instances")  # what the workers of a parallel run share out


def _verify_instance(job) -> tuple[str, str, float, int | None]:
    """``(status, result text, seconds, sub-domains)`` of one instance; a late answer scores as
    a timeout."""
    verify_fn, onnx, vnnlib, timeout, executor = job
    start = time.monotonic()
    try:
        kw = {"executor": executor} if executor is not None else {}
        res = verify_fn(onnx, vnnlib, timeout=timeout, **kw)
        status, text, domains = res.status, res.vnncomp(), getattr(res, "boxes", None)
    except BoundFlowError as e:
        status, text, domains = "error", f"error\n; {e}\n", None
    elapsed = time.monotonic() - start
    if status in ("sat", "unsat") and elapsed > timeout:
        status, text = "timeout", "timeout\n"
    return status, text, elapsed, domains


_BOXES = re.compile(r"\(\s*[0-9.]+ s, (\d+) boxes\)")


def _verify_isolated(job) -> tuple[str, str, float, int | None]:
    """``(status, result text, seconds, sub-domains)`` of one instance run as the competition runs it: a
    fresh ``boundflow verify`` process (start-up counted), its answer read from its result
    file; a process still running 5 s past the timeout is killed and scored ``timeout``."""
    import subprocess
    import sys
    import tempfile

    _, onnx, vnnlib, timeout, _ = job
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.txt"
        cmd = [sys.executable, "-m", "boundflow", "verify", str(onnx), str(vnnlib), "--timeout", f"{timeout}"]
        cmd += ["--out", str(out), "--no-progress"]
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            return "timeout", "timeout\n; killed 5 s after the timeout\n", time.monotonic() - start, None
        elapsed = time.monotonic() - start
        if not out.exists():
            why = (proc.stderr.strip().splitlines() or ["no result file"])[-1]
            return "error", f"error\n; {why}\n", elapsed, None
        text = out.read_text()
    status = text.split("\n", 1)[0].strip()
    if status in ("sat", "unsat") and elapsed > timeout:
        status, text = "timeout", "timeout\n"
    found = _BOXES.search(proc.stdout)
    return status, text, elapsed, int(found.group(1)) if found else None


class InstancesError(BoundFlowError, ValueError):
    """A malformed instances CSV (the message names the file and line)."""


@dataclass
class Instance:
    onnx: Path
    vnnlib: Path
    timeout: float
    expected: str | None = None
    onnx_text: str = ""
    vnnlib_text: str = ""


def read_instances(csv_path: str | Path) -> list[Instance]:
    """The rows of an instances CSV; every file is checked to exist before any work."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InstancesError(f"{csv_path}: no instances CSV there")
    base = csv_path.parent
    out = []
    for lineno, row in enumerate(csv.reader(io.StringIO(csv_path.read_text())), start=1):
        row = [c.strip() for c in row]
        if not row or not any(row) or row[0].startswith("#"):
            continue
        if lineno == 1 and row[0] == "onnx":
            continue  # a header (the shared folders have one; the competition's files do not)
        if len(row) < 3:
            raise InstancesError(f"{csv_path}:{lineno}: expected 'onnx,vnnlib,timeout', got {','.join(row)!r}")
        try:
            timeout = float(row[2])
        except ValueError:
            raise InstancesError(f"{csv_path}:{lineno}: timeout {row[2]!r} is not a number") from None
        if not timeout > 0:
            raise InstancesError(f"{csv_path}:{lineno}: timeout must be > 0, got {row[2]}")
        onnx, vnnlib = base / row[0], base / row[1]
        for p in (onnx, vnnlib):
            if not p.is_file():
                raise InstancesError(f"{csv_path}:{lineno}: no file {p}")
        expected = row[3] if len(row) > 3 and row[3] else None
        out.append(Instance(onnx, vnnlib, timeout, expected, row[0], row[1]))
    if not out:
        raise InstancesError(f"{csv_path}: no instances")
    return out


def _result_name(i: int, inst: Instance) -> str:
    def stem(p: str) -> str:
        name = Path(p).name
        for ext in (".gz", ".onnx", ".vnnlib"):
            name = name.removesuffix(ext)
        return name

    return f"{i:04d}_{stem(inst.onnx_text)}_{stem(inst.vnnlib_text)}.txt"


def _read_done(results_csv: Path) -> dict[tuple[str, str], dict]:
    if not results_csv.is_file():
        return {}
    done = {}
    for row in csv.DictReader(io.StringIO(results_csv.read_text())):
        done[(row["onnx"], row["vnnlib"])] = row
    return done


def _write_csv(path: Path, rows: list[dict]) -> None:
    from boundflow.atomic import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def run_benchmark(
    csv_path: str | Path,
    out_dir: str | Path,
    *,
    benchmark: str | None = None,
    timeout_factor: float = 1.0,
    progress: bool = True,
    verify_fn=None,
    executor=None,
    parallel: str = "subdomains",
    isolate: bool = False,
    timeout_cap: float | None = None,
) -> list[dict]:
    """Verify every instance of ``csv_path`` (see the module docstring); returns the rows of the
    results CSV (``out_dir/results.csv``), one result file per instance in ``out_dir``.
    ``executor`` (:func:`solvers.executor.make_executor`) with ``parallel="subdomains"``: each
    instance's branch and bound is spread over its workers; ``"instances"``: the workers take
    whole instances, each verified serially (its time counted from when a worker starts it).
    ``isolate``: each instance in its own ``boundflow verify`` process, timed from its launch
    (the competition's way; a process that overruns is killed).  ``timeout_cap``: no instance
    gets more than this many seconds (after ``timeout_factor``)."""
    from boundflow.atomic import atomic_write_text

    if parallel not in PARALLEL:
        raise InstancesError(f"parallel must be one of {', '.join(PARALLEL)}, got {parallel!r}")
    if verify_fn is None:
        from boundflow.verify import verify as verify_fn
    instances = read_instances(csv_path)
    if not timeout_factor > 0:
        raise InstancesError(f"timeout factor must be > 0, got {timeout_factor}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InstancesError(f"{out_dir}: cannot create the results folder ({e.strerror})") from None
    benchmark = benchmark or Path(csv_path).resolve().parent.name
    results_csv = out_dir / "results.csv"
    done = _read_done(results_csv)
    rows = []
    for inst in instances:  # finished instances, with their timeout and expected answer
        row = done.get((inst.onnx_text, inst.vnnlib_text))
        if row is not None:
            t = inst.timeout * timeout_factor
            t = min(t, timeout_cap) if timeout_cap is not None else t
            rows.append({**row, "expected": inst.expected or "", "timeout": f"{t:g}"})
    todo = [(i, inst) for i, inst in enumerate(instances) if (inst.onnx_text, inst.vnnlib_text) not in done]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(instances), initial=len(instances) - len(todo), desc=benchmark, unit="inst")
    order = {(inst.onnx_text, inst.vnnlib_text): i for i, inst in enumerate(instances)}
    by_instances = executor is not None and parallel == "instances" and executor.workers > 1
    if timeout_cap is not None and not timeout_cap > 0:
        raise InstancesError(f"timeout cap must be > 0, got {timeout_cap}")

    def limit(inst: Instance) -> float:
        t = inst.timeout * timeout_factor
        return min(t, timeout_cap) if timeout_cap is not None else t

    jobs = [(verify_fn, inst.onnx, inst.vnnlib, limit(inst), None) for _, inst in todo]
    run_one = _verify_isolated if isolate else _verify_instance
    if by_instances:
        results = executor.imap(run_one, jobs)
    else:
        results = ((k, run_one(job[:4] + (executor,))) for k, job in enumerate(jobs))
    for k, (status, text, elapsed, domains) in results:
        i, inst = todo[k]
        timeout = limit(inst)
        atomic_write_text(out_dir / _result_name(i, inst), text)
        rows.append(
            {
                "benchmark": benchmark,
                "onnx": inst.onnx_text,
                "vnnlib": inst.vnnlib_text,
                "prepare_time": "0.0",
                "result": status,
                "run_time": f"{elapsed:.3f}",
                "domains": "" if domains is None else str(domains),
                "expected": inst.expected or "",
                "timeout": f"{timeout:g}",
            }
        )
        rows.sort(key=lambda r: order.get((r["onnx"], r["vnnlib"]), -1))  # the CSV's order
        _write_csv(results_csv, rows)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{status} {elapsed:.1f}s")
    if bar is not None:
        bar.close()
    return rows
