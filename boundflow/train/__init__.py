"""Certified training on bounded data (FullCert; bounded poisoning and label flipping as in
Abstract Gradient Training)."""

from boundflow.train.bounded import (
    BUDGETS,
    BoundedDataset,
    from_torch,
    label_flip,
    linf,
    linf_subset,
    missing,
    poison,
    removal,
    substitution,
)
from boundflow.train.certify import (
    Certification,
    ErrorBounds,
    PredictionRange,
    certify,
    error_bounds,
    logit_bounds,
    prediction_range,
)
from boundflow.train.datasets import DATASETS, Dataset, load_dataset, load_file
from boundflow.train.features import frozen_features
from boundflow.train.io import load_bounds, save_bounds
from boundflow.train.job import THREATS, TrainJob, TrainResult, run_job
from boundflow.train.losses import LOSSES, bounded_loss, plain_loss
from boundflow.train.optim import IntervalSGD
from boundflow.train.trainer import ParameterBounds, TrainConfig, TrainingDiverged, batch_indices, certified_training

__all__ = [
    "BUDGETS",
    "BoundedDataset",
    "Certification",
    "DATASETS",
    "Dataset",
    "ErrorBounds",
    "PredictionRange",
    "IntervalSGD",
    "LOSSES",
    "ParameterBounds",
    "THREATS",
    "TrainConfig",
    "TrainJob",
    "TrainResult",
    "TrainingDiverged",
    "batch_indices",
    "bounded_loss",
    "certified_training",
    "from_torch",
    "certify",
    "error_bounds",
    "frozen_features",
    "logit_bounds",
    "prediction_range",
    "label_flip",
    "linf",
    "linf_subset",
    "load_bounds",
    "load_dataset",
    "load_file",
    "missing",
    "plain_loss",
    "poison",
    "removal",
    "run_job",
    "substitution",
    "save_bounds",
]
