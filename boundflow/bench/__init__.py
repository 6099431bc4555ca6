"""Benchmarks users run: relaxation tightness across methods (:mod:`boundflow.bench.tightness`,
``boundflow bench tightness``) and training-time tightness across certified-training methods
(:mod:`boundflow.bench.training`, ``boundflow bench training``)."""

from boundflow.bench.networks import Case, builtin_cases, factory_case, onnx_case
from boundflow.bench.tightness import METHODS, TightnessResult, attack, check_consistency, run, run_case

__all__ = [
    "METHODS",
    "Case",
    "TightnessResult",
    "attack",
    "builtin_cases",
    "check_consistency",
    "factory_case",
    "onnx_case",
    "run",
    "run_case",
]
