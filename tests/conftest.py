"""Test-session set-up.  Under pytest-xdist (``make test`` runs one worker per core) each worker
uses one torch thread, so that the workers do not oversubscribe the cores."""

from __future__ import annotations

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
