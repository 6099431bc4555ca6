"""Deadlines travel with each query (``boundflow.deadline``), and the command line's watchdog
answers ``timeout`` in time even when the main thread is stuck.  No data needed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import boundflow as bf
from boundflow import deadline


def test_check_raises_only_inside_an_expired_scope_and_nested_scopes_keep_the_earlier():
    deadline.check()  # no scope: never raises
    with deadline.within(time.monotonic() + 60):
        deadline.check()
        with deadline.within(time.monotonic() - 1):
            with pytest.raises(deadline.DeadlineExceeded):
                deadline.check()
        deadline.check()
        with deadline.within(time.monotonic() + 3600):  # a later one does not extend the outer
            assert deadline.current() < time.monotonic() + 61
    assert deadline.current() is None


@pytest.mark.parametrize("method", ["crown", "forward"])
def test_a_bound_call_stops_at_the_deadline(method):
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).double()
    lo, hi = torch.zeros(2, 8, dtype=torch.float64), torch.ones(2, 8, dtype=torch.float64)
    bf.compute_bounds(model, lo, hi, method=method)  # fine without a deadline
    with deadline.within(time.monotonic() - 0.001), pytest.raises(deadline.DeadlineExceeded):
        bf.compute_bounds(model, lo, hi, method=method)


def test_watchdog_answers_timeout_while_the_main_thread_is_stuck(tmp_path):
    out = tmp_path / "result.txt"
    code = textwrap.dedent(
        f"""
        import threading, time
        from boundflow.cli import verify as v
        from boundflow.atomic import atomic_write_text
        lock = threading.Lock()
        def give(status, text, notes=(), boxes=0):
            print(status, flush=True)
            atomic_write_text({str(out)!r}, text)
            return v.EXIT_UNDECIDED
        v._watchdog(time.monotonic() + 0.5, lock, give)
        time.sleep(30)  # a call that never checks the deadline
        print("not reached")
        """
    )
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert p.returncode == 20 and p.stdout.split() == ["timeout"], (p.returncode, p.stdout, p.stderr)
    assert out.read_text() == "timeout\n"
    assert elapsed < 20, elapsed  # far less than the 30 s the main thread would take


def test_watchdog_stays_silent_when_the_main_thread_answered(tmp_path):
    code = textwrap.dedent(
        """
        import threading, time
        from boundflow.cli import verify as v
        lock = threading.Lock()
        def give(status, text, notes=(), boxes=0):
            print(status, flush=True)
            return v.EXIT_UNDECIDED
        v._watchdog(time.monotonic() + 0.3, lock, give)
        assert lock.acquire(blocking=False)  # the main thread answers first
        print("unsat", flush=True)
        time.sleep(1.0)
        """
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.split() == ["unsat"], (p.stdout, p.stderr)
