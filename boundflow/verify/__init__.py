"""Verification pipeline: falsification, bounds, branch and bound, checked counterexamples."""

from boundflow.verify.pipeline import Result, verify, verify_model

__all__ = ["Result", "verify", "verify_model"]
