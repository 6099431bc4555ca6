"""Running many independent solves: serially, on a local process pool, or on a Ray cluster.

Every executor maps a function over items (:meth:`imap`, results as they finish) and runs the
same tasks — fixed chunks of objectives, each chunk solved in order by
one solver instance built from the program — so the results are identical whatever the
executor and the number of workers (the solvers run single-threaded with a fixed seed).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

from solvers.backends import Outcome, make_solver
from solvers.program import Program

__all__ = ["Executor", "SerialExecutor", "ProcessExecutor", "RayExecutor", "make_executor", "minimize_all", "EXECUTORS"]

EXECUTORS = ("serial", "process", "ray")


def solve_chunk(
    program: Program, mode: str, objectives: list, time_limit: float | None, backend: str | None = None
) -> list[Outcome]:
    """Minimise each objective (``(indices, values)``, sparse) in turn with one solver."""
    solver = make_solver(program, mode, backend)
    out = []
    for idx, val in objectives:
        c = np.zeros(program.n_vars)
        np.add.at(c, np.asarray(idx, dtype=np.int64), np.asarray(val, dtype=np.float64))
        out.append(solver.minimize(c, time_limit))
    return out


class SerialExecutor:
    """Runs the tasks one after another in this process."""

    name = "serial"
    workers = 1

    def warm(self, fn: Callable, item) -> None:
        pass

    def imap(self, fn: Callable, items: Sequence, until: float | None = None) -> Iterator[tuple[int, object]]:
        """``(i, fn(items[i]))`` for every item, here in order (``until`` is not enforced here:
        a task cannot be interrupted in its own process)."""
        for i, item in enumerate(items):
            yield i, fn(item)

    def run(self, tasks, mode, time_limit, on_done: Callable[[int], None] | None = None, backend=None):
        return _run_chunks(self, tasks, mode, time_limit, on_done, backend)

    def close(self) -> None:
        pass


def _solve_task(task):
    program, chunk, mode, time_limit, backend = task
    return solve_chunk(program, mode, chunk, time_limit, backend)


def _run_chunks(executor, tasks, mode, time_limit, on_done, backend) -> list:
    """The chunks' outcomes, in the order of ``tasks``, whatever order they finish in."""
    results: list = [None] * len(tasks)
    jobs = [(p, ch, mode, time_limit, backend) for p, ch in tasks]
    for i, r in executor.imap(_solve_task, jobs):
        results[i] = r
        if on_done:
            on_done(len(tasks[i][1]))
    return results


class ProcessExecutor:
    """A local pool of ``workers`` processes (``spawn``: safe next to torch's threads).

    :meth:`imap` yields results as they finish; a caller that stops reading early (a
    counterexample found) gets the outstanding tasks cancelled and the running ones stopped:
    the pool's processes are terminated and a fresh pool is started for the next call."""

    name = "process"

    def __init__(self, workers: int | None = None):
        self.workers = workers or os.cpu_count() or 1
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        import multiprocessing as mp

        return ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))

    def warm(self, fn: Callable, item) -> None:
        """Start every worker now with ``fn(item)`` (e.g. imports), without waiting for it."""
        for _ in range(self.workers):
            self._pool.submit(fn, item)

    def imap(self, fn: Callable, items: Sequence, until: float | None = None) -> Iterator[tuple[int, object]]:
        """``(i, fn(items[i]))`` as the tasks finish; ``until`` (a ``time.time()`` reading):
        :class:`TimeoutError` once it passes with tasks outstanding (they are stopped)."""
        futures = {self._pool.submit(fn, item): i for i, item in enumerate(items)}
        finished = False
        left = None if until is None else max(0.0, until - time.time())
        try:
            for f in as_completed(futures, timeout=left):
                yield futures[f], f.result()
            finished = True
        finally:
            if not finished:
                self._stop()

    def _stop(self) -> None:
        # ProcessPoolExecutor cannot interrupt a running task: terminate its processes
        # (``_processes`` is the pool's own table of them) and replace the pool
        procs = list(getattr(self._pool, "_processes", {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(5)
        self._pool = self._new_pool()

    def run(self, tasks, mode, time_limit, on_done=None, backend=None):
        return _run_chunks(self, tasks, mode, time_limit, on_done, backend)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class RayExecutor:
    """Ray tasks, one per item: ``address=None`` starts a local Ray, ``"auto"`` or
    ``"ray://host:port"`` joins a cluster.  Stopping :meth:`imap` early cancels the
    outstanding tasks (running ones are killed)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None):
        try:
            import ray
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the Ray executor needs ray: pip install 'boundflow[cluster]'") from e
        self._ray = ray
        if not ray.is_initialized():
            kw = {"address": address} if address else {"num_cpus": workers or os.cpu_count()}
            ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False, **kw)
        self.workers = int(ray.available_resources().get("CPU", 1))
        self._remote = ray.remote(num_cpus=1)(_call)

    def warm(self, fn: Callable, item) -> None:
        for _ in range(self.workers):
            self._remote.remote(fn, item)

    def imap(self, fn: Callable, items: Sequence, until: float | None = None) -> Iterator[tuple[int, object]]:
        """``(i, fn(items[i]))`` as the tasks finish; ``until`` (a ``time.time()`` reading):
        :class:`TimeoutError` once it passes with tasks outstanding (they are cancelled)."""
        ray = self._ray
        fn_ref = ray.put(fn)
        pending = {self._remote.remote(fn_ref, ray.put(item)): i for i, item in enumerate(items)}
        try:
            while pending:
                left = None if until is None else max(0.0, until - time.time())
                done, _ = ray.wait(list(pending), num_returns=1, timeout=left)
                if not done:
                    raise TimeoutError("tasks still running at the deadline")
                for d in done:
                    yield pending.pop(d), ray.get(d)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def run(self, tasks, mode, time_limit, on_done=None, backend=None):
        return _run_chunks(self, tasks, mode, time_limit, on_done, backend)

    def close(self) -> None:
        pass  # the Ray runtime stays up for the rest of the process (ray.shutdown() ends it)


def _call(fn, item):
    return fn(item)


Executor = SerialExecutor | ProcessExecutor | RayExecutor


def make_executor(name: str = "process", workers: int | None = None, address: str | None = None) -> Executor:
    """``serial``, ``process`` (``workers`` processes; ``1`` runs serially) or ``ray``."""
    if name == "serial" or (name == "process" and workers == 1):
        return SerialExecutor()
    if name == "process":
        return ProcessExecutor(workers)
    if name == "ray":
        return RayExecutor(address, workers)
    raise ValueError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")


def minimize_all(
    tasks: Sequence[tuple[Program, Sequence[tuple[np.ndarray, np.ndarray]]]],
    mode: str,
    executor: Executor | None = None,
    time_limit: float | None = None,
    chunk: int = 16,
    on_done: Callable[[int], None] | None = None,
    backend: str | None = None,
) -> list[list[Outcome]]:
    """Sound lower bounds of every objective (sparse ``(indices, values)``) over its program:
    ``tasks`` is a list of ``(program, objectives)``; the result has one list of outcomes per
    task, in order.  Up to ``chunk`` objectives of a task share one solver instance (warm
    starts); the chunking does not depend on the executor, so neither do the results.
    ``backend``: see :func:`solvers.backends.make_solver`."""
    executor = executor or SerialExecutor()
    jobs, owner = [], []
    for t, (program, objectives) in enumerate(tasks):
        objectives = list(objectives)
        for i in range(0, len(objectives), chunk):
            jobs.append((program, objectives[i : i + chunk]))
            owner.append(t)
    results = executor.run(jobs, mode, time_limit, on_done, backend) if jobs else []
    out: list[list[Outcome]] = [[] for _ in tasks]
    for t, r in zip(owner, results):
        out[t].extend(r)
    for (_, objectives), r in zip(tasks, out):
        assert len(r) == len(objectives)
        assert all(not math.isnan(o.bound) for o in r)
    return out
