"""A whole certified-training job as one call: data, threat model, model, training, the kept
box's certification, and a results folder (``metrics.json``, ``bounds.pt``, ``checkpoint.pt``,
plots) that can be resumed.  ``boundflow train`` parses its options into a :class:`TrainJob`
and prints the :class:`TrainResult` of :func:`run_job`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from boundflow.errors import JobError
from boundflow.outputs import JobOutput

__all__ = ["THREATS", "TrainJob", "TrainResult", "run_job"]

THREATS = ("linf", "poison", "label-flip", "removal", "substitution")
"""Threat models of a job: every feature within ``eps``; ``k`` samples poisoned; ``k`` labels
flipped; ``k`` samples removed (certified unlearning); ``k`` samples replaced by anything."""

# Settings that may change when a run is resumed (they do not change what is computed).
_RESUMABLE = {"epochs", "workers", "executor", "address"}


@dataclass
class TrainJob:
    """What to train and how.  ``data``: a ``.npz``/``.csv`` file or a folder of ``.npy`` files
    (see :func:`boundflow.train.load_file`); otherwise the embedded ``dataset``.  ``eps``
    defaults to 0.01 for ``linf``/``poison`` and must stay unset for the threats that move whole
    samples or labels.  The model is :func:`boundflow.models.hidden_mlp` with ``layers`` linear
    layers of width ``hidden``.  ``val_fraction`` of the training data is held out to choose the
    kept box (``keep_best``) and to stop early (``stop_drop``, ``patience``).  ``step``: the
    training step's bounds (``ibp``, ``lp``, ``milp``, ``mibp``); solver steps use ``workers``
    processes of ``executor`` with ``time_limit`` seconds per solve, one program per ``group``
    samples (``joint``: one per batch).  Other fields as in :class:`boundflow.train.TrainConfig`."""

    dataset: str = "moons"
    data: str | None = None
    regression: bool = False
    threat: str = "linf"
    eps: float | None = None
    k: int = 1
    clip: float | None = None
    epochs: int = 10
    hidden: int = 20
    layers: int = 2
    lr: float = 0.1
    lr_decay: float = 1.0
    keep_best: bool = True
    stop_drop: float | None = None
    patience: int | None = None
    val_fraction: float = 0.2
    batch_size: int = 100
    loss: str | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    pretrain_epochs: int = 0
    shuffle: bool = False
    seed: int = 0
    n_samples: int = 1000
    test_eps: float = 0.0
    step: str = "ibp"
    workers: int = 1
    executor: str = "process"
    address: str | None = None
    time_limit: float | None = None
    group: int = 1
    joint: bool = False

    def check(self) -> None:
        """Raise :class:`~boundflow.errors.JobError` naming the first setting that cannot work
        (before any data is read)."""
        from boundflow.domains.registry import canonical_method
        from boundflow.train.losses import LOSSES
        from boundflow.train.trainer import METHODS

        self.step = canonical_method(self.step)
        checks = [
            (
                self.threat in THREATS,
                f"{{threat}} {JobError.literal(repr(self.threat))}: choose from {', '.join(THREATS)}",
            ),
            (self.step in METHODS, f"{{step}} {JobError.literal(repr(self.step))}: choose from {', '.join(METHODS)}"),
            (
                self.loss is None or self.loss in LOSSES,
                f"{{loss}} {JobError.literal(repr(self.loss))}: choose from {', '.join(LOSSES)}",
            ),
            (
                self.executor in ("serial", "process", "ray"),
                f"{{executor}} {JobError.literal(repr(self.executor))}: serial, process or ray",
            ),
            (self.workers >= 1, f"{{workers}} must be >= 1, got {self.workers}"),
            (self.time_limit is None or self.time_limit > 0, f"{{time_limit}} must be > 0, got {self.time_limit}"),
            (self.pretrain_epochs >= 0, f"{{pretrain_epochs}} must be >= 0, got {self.pretrain_epochs}"),
            (0 <= self.momentum < 1, f"{{momentum}} must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"{{weight_decay}} must be >= 0, got {self.weight_decay}"),
            (self.epochs >= 1, f"{{epochs}} must be >= 1, got {self.epochs}"),
            (self.hidden >= 1, f"{{hidden}} must be >= 1, got {self.hidden}"),
            (self.layers >= 1, f"{{layers}} must be >= 1, got {self.layers}"),
            (self.batch_size >= 1, f"{{batch_size}} must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"{{lr}} must be > 0, got {self.lr}"),
            (0 < self.lr_decay <= 1, f"{{lr_decay}} must be in (0, 1], got {self.lr_decay}"),
            (self.eps is None or self.eps >= 0, f"{{eps}} must be >= 0, got {self.eps}"),
            (self.k >= 0, f"{{k}} must be >= 0, got {self.k}"),
            (self.group >= 1, f"{{group}} must be >= 1 samples per program, got {self.group}"),
            (self.n_samples >= 2, f"{{n_samples}} must be >= 2, got {self.n_samples}"),
            (not self.regression or self.data, "{regression} needs {data} (the embedded datasets are classification)"),
            (
                not self.regression or self.threat != "label-flip",
                "{threat} label-flip flips class labels; regression targets take linf, poison, removal or substitution",
            ),
            (0 <= self.val_fraction < 1, f"{{val_fraction}} must be in [0, 1), got {self.val_fraction}"),
            (self.test_eps >= 0, f"{{test_eps}} must be >= 0, got {self.test_eps}"),
            (self.patience is None or self.patience >= 1, f"{{patience}} must be >= 1, got {self.patience}"),
            (self.stop_drop is None or self.stop_drop >= 0, f"{{stop_drop}} must be >= 0, got {self.stop_drop}"),
            (
                not (self.threat == "label-flip" and self.eps is not None),
                "{eps} has no effect with {threat} label-flip (labels flip, features stay); drop it",
            ),
            (
                not (self.threat in ("removal", "substitution") and self.eps is not None),
                f"{{eps}} has no effect with {{threat}} {self.threat} (samples are removed or replaced whole); drop it",
            ),
            (self.clip is None or self.clip > 0, f"{{clip}} must be > 0, got {self.clip}"),
            (
                self.threat != "substitution" or self.clip is not None,
                "{threat} substitution needs {clip} (a replaced sample's gradient is otherwise unbounded)",
            ),
            (self.clip is None or self.step == "ibp", f"{{clip}} is modelled by {{step}} ibp only, not {self.step}"),
            (
                self.threat != "removal" or self.k < self.batch_size,
                f"{{threat}} removal: {{k}} {self.k} must be below {{batch_size}} {self.batch_size}",
            ),
            (
                self.val_fraction > 0
                or not (self.keep_best or self.stop_drop is not None or self.patience is not None),
                "{keep_best}, {stop_drop} and {patience} need validation data: "
                "{val_fraction} > 0 (or keep the last epoch's box)",
            ),
        ]
        why = next((msg for ok, msg in checks if not ok), None)
        if why:
            raise JobError(why)

    @property
    def radius(self) -> float:
        """The feature radius used: ``eps``, or its default for the threat model."""
        if self.eps is not None:
            return self.eps
        return 0.0 if self.threat in ("label-flip", "removal", "substitution") else 0.01


@dataclass
class TrainResult(JobOutput):
    """What :func:`run_job` made: the trained box (``bounds``; ``kept`` is the box the
    selection rule keeps), the model whose parameters are its centre's start, the test
    certification (``certification`` for classification, ``error`` for regression), the
    metrics written to ``metrics.json``, the results folder and its files, and a short report
    (``lines``)."""

    model: nn.Module
    bounds: object
    kept: object
    metrics: dict
    certification: object | None = None
    error: object | None = None


def run_job(
    job: TrainJob,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
    argv: list[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run ``job``: check its settings, load the data, hold out validation data, train on the
    bounded data, keep a box and certify the test data with it.

    With ``out``, the folder is claimed first (:func:`boundflow.outputs.claim`: a previous
    run's results are replaced only with ``force``), a checkpoint is written atomically after
    every epoch, and ``resume`` continues from it, refusing (:class:`JobError`) a checkpoint
    written for another configuration, threat model, dataset, model or test radius.  ``log``
    receives progress lines (resuming).  Every :class:`JobError` comes before training."""
    from boundflow.models import hidden_mlp
    from boundflow.train import certified_training, load_bounds, save_bounds
    from boundflow.train.datasets import load_dataset, load_file

    job.check()
    data = (
        load_file(job.data, seed=job.seed, regression=job.regression)
        if job.data
        else load_dataset(job.dataset, seed=job.seed, n_samples=job.n_samples)
    )
    c = data.n_classes
    loss = job.loss or ("mse" if job.regression else "bce" if c == 2 else "cross_entropy")
    if job.regression and loss != "mse":
        raise JobError(f"{{regression}} trains with {{loss}} mse, not {loss!r}")
    if loss in ("bce", "hinge") and c != 2:
        raise JobError(f"{{loss}} {loss!r} needs two classes, {JobError.literal(data.name)} has {c}")
    x_train, y_train, val = _split_val(data.x_train, data.y_train, job.val_fraction, job.seed)
    if job.batch_size > len(x_train):
        raise JobError(
            f"{{batch_size}} {job.batch_size} is larger than the {len(x_train)} training samples "
            f"(after holding out {len(data.x_train) - len(x_train)} for validation): no batch would run"
        )
    if job.threat != "linf" and job.k > job.batch_size:
        raise JobError(f"{{k}} {job.k} is larger than {{batch_size}} {job.batch_size}")
    d_out = data.n_outputs if job.regression else 1 if loss in ("bce", "hinge") else c
    model = hidden_mlp(data.n_features, d_out, job.hidden, job.layers, job.seed)
    bd = _bounded(job, x_train, y_train, c)
    config = _config(job, loss)
    extra = {
        "dataset": data.name,
        "threat": bd.threat,
        "threat_model": {
            "threat": job.threat,
            "epsilon": job.radius,
            "k": None if job.threat == "linf" else job.k,
            "clip": job.clip,
        },
        "data_sha256": _fingerprint(bd, val),
        "model": str(model),
        "test_eps": job.test_eps,
    }
    folder = ckpt = start = None
    if out is not None:
        from boundflow.outputs import claim, record

        names = ["metrics.json", "bounds.pt", "checkpoint.pt", "training.png", "regions.png"]
        resuming = resume and (Path(out) / "checkpoint.pt").exists()
        folder = claim(out, names, force=force, resume=resuming)
        ckpt = folder / "checkpoint.pt"
        if resuming:
            start = _resumed(ckpt, config, extra, load_bounds)
            if log:
                log(f"resuming from epoch {start.epochs_done}")
        record(folder, argv)

    def on_epoch(bounds, metrics):
        if ckpt is not None:
            save_bounds(ckpt, bounds, config, extra)

    bounds = certified_training(
        model,
        bd,
        config,
        test=(data.x_test, data.y_test),
        test_eps=job.test_eps,
        progress=progress,
        start=start,
        on_epoch=on_epoch,
        val=val,
        val_eps=job.test_eps,
    )
    kept = bounds.kept()
    if folder is not None:
        save_bounds(folder / "bounds.pt", kept, config, {**extra, "kept_epoch": kept.epochs_done})
    finish = _finish_regression if job.regression else _finish_classification
    res = finish(job, data, bd, config, bounds, kept, extra, model)
    res.out = folder
    if folder is not None:
        _write(res, job, data, bd, folder)
    return res


def _bounded(job: TrainJob, x, y, n_classes: int):
    """The job's threat model over the training data."""
    from boundflow.train import label_flip, linf, poison, removal, substitution

    if job.threat == "linf":
        return linf(x, y, job.radius, regression=job.regression)
    if job.threat == "poison":
        return poison(x, y, job.k, job.radius, regression=job.regression)
    if job.threat == "removal":
        return removal(x, y, job.k, regression=job.regression)
    if job.threat == "substitution":
        return substitution(x, y, job.k, regression=job.regression)
    return label_flip(x, y, job.k, n_classes=n_classes)


def _config(job: TrainJob, loss: str):
    from boundflow.train import TrainConfig

    return TrainConfig(
        epochs=job.epochs,
        lr=job.lr,
        batch_size=job.batch_size,
        loss=loss,
        momentum=job.momentum,
        weight_decay=job.weight_decay,
        seed=job.seed,
        shuffle=job.shuffle,
        pretrain_epochs=job.pretrain_epochs,
        step=job.step,
        workers=job.workers,
        executor=job.executor,
        address=job.address,
        time_limit=job.time_limit,
        decompose=False if job.joint else (True if job.group == 1 else job.group),
        lr_decay=job.lr_decay,
        keep_best=job.keep_best,
        stop_drop=job.stop_drop,
        patience=job.patience,
        clip=job.clip,
    )


def _resumed(ckpt: Path, config, extra: dict, load_bounds):
    """The checkpoint's box, once its configuration and data match this job's."""
    start, saved_cfg, saved_extra = load_bounds(ckpt)
    old_cfg = {k: v for k, v in asdict(saved_cfg).items() if k not in _RESUMABLE}
    new_cfg = {k: v for k, v in asdict(config).items() if k not in _RESUMABLE}
    where = JobError.literal(ckpt)
    if old_cfg != new_cfg:
        diff = JobError.literal(
            ", ".join(f"{k} {old_cfg.get(k)!r} -> {new_cfg.get(k)!r}" for k in new_cfg if old_cfg.get(k) != new_cfg[k])
        )
        raise JobError(f"{where} was written with a different configuration ({diff}); use another {{out}}")
    checked = (
        ("threat_model", "threat model"),
        ("data_sha256", "dataset"),
        ("model", "model"),
        ("test_eps", "test radius"),
    )
    for key, what in checked:
        if saved_extra.get(key) != extra[key]:
            shown = JobError.literal(f"({saved_extra.get(key)!r}, now {extra[key]!r})")
            raise JobError(f"{where} was written for a different {what} {shown}; use another {{out}}")
    return start


def _run_record(data, bd, extra, config, bounds) -> dict:
    """What metrics.json says of every run: data, threat model, configuration, epochs."""
    return {
        "dataset": data.name,
        "threat": bd.threat,
        "threat_model": extra["threat_model"],
        "config": asdict(config),
        "epochs_done": bounds.epochs_done,
        "diverged_at": bounds.diverged_at,
        "stopped_at": bounds.stopped_at,
    }


def _finish_classification(job, data, bd, config, bounds, kept, extra, model) -> TrainResult:
    """Certified test accuracy of the kept box, the metrics and the report."""
    from boundflow.train import certify

    cert = certify(model, kept, data.x_test, data.y_test, job.test_eps)
    rule = "best validation certified accuracy" if job.keep_best else "last epoch"
    metrics = {
        **_run_record(data, bd, extra, config, bounds),
        "kept": {
            "epoch": kept.epochs_done,
            "rule": rule,
            "val_certified_accuracy": (bounds.best or {}).get("score"),
        },
        "final": {
            "certified_accuracy": cert.accuracy,
            "certified_fraction": cert.certified,
            "mean_width": kept.mean_width(),
        },
        "history": bounds.history,
    }
    stop = f", stopped early after epoch {bounds.stopped_at}" if bounds.stopped_at else ""
    line = (
        f"{data.name} {bd.threat}: {bounds.epochs_done} epochs{stop}; kept the box of epoch {kept.epochs_done} "
        f"({rule}): test certified accuracy {cert.accuracy:.3f} "
        f"(certified {cert.certified:.3f}), mean bound width {kept.mean_width():.3g}"
    )
    return TrainResult(model, bounds, kept, metrics, certification=cert, lines=[line])


def _finish_regression(job, data, bd, config, bounds, kept, extra, model) -> TrainResult:
    """Certified error bounds of the kept box on the test data, the metrics and the report."""
    from boundflow.train import error_bounds

    err = error_bounds(model, kept, data.x_test, data.y_test, job.test_eps)
    metrics = {
        **_run_record(data, bd, extra, config, bounds),
        "kept": {
            "epoch": kept.epochs_done,
            "rule": "best validation certified MSE" if job.keep_best else "last epoch",
        },
        "final": {
            "certified_mse_lower": err.mse_lower,
            "certified_mse_upper": err.mse_upper,
            "certified_mae_upper": err.mae_upper,
            "mean_width": kept.mean_width(),
        },
        "history": bounds.history,
    }
    line = (
        f"{data.name} {bd.threat}: {bounds.epochs_done} epochs; kept the box of epoch {kept.epochs_done}: "
        f"test MSE certified in [{err.mse_lower:.4g}, {err.mse_upper:.4g}], mean bound width {kept.mean_width():.3g}"
    )
    return TrainResult(model, bounds, kept, metrics, error=err, lines=[line])


def _write(res: TrainResult, job: TrainJob, data, bd, folder: Path) -> None:
    """``metrics.json`` and the plots (training history; certified regions of 2-D data)."""
    from boundflow.atomic import atomic_write_text
    from boundflow.train.plots import plot_history, plot_regions

    atomic_write_text(folder / "metrics.json", json.dumps(res.metrics, indent=2))
    res.files = ["metrics.json", "bounds.pt", "training.png"]
    if res.bounds.history:
        title = (
            f"{data.name}, {bd.threat}, regression"
            if job.regression
            else f"{data.name}, {bd.threat}, {job.layers} layers x {job.hidden}"
        )
        plot_history(res.bounds.history, folder / "training.png", title)
    if not job.regression and data.n_features == 2:
        plot_regions(
            res.model,
            res.kept,
            data.x_test,
            data.y_test,
            folder / "regions.png",
            job.test_eps,
            f"certified regions of the kept box, epoch {res.kept.epochs_done} (grey: abstain)",
        )
        res.files.append("regions.png")
    res.lines.append(f"wrote {folder}/{', '.join(res.files)}")


def _split_val(x, y, fraction: float, seed: int):
    """``(x_train, y_train, (x_val, y_val) or None)``: a seeded share of the training data (of
    streamed data: its last rows)."""
    n_val = int(round(fraction * len(x)))
    if n_val == 0:
        return x, y, None
    if not isinstance(x, torch.Tensor):  # streamed (memory-mapped): the last rows, without a copy
        m = len(x) - n_val
        return x[:m], y[:m], (torch.as_tensor(np.asarray(x[m:], dtype=np.float64)), y[m:])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 7919))
    tr, va = order[n_val:].sort().values, order[:n_val].sort().values
    return x[tr], y[tr], (x[va], y[va])


def _fingerprint(bd, val) -> str:
    """SHA-256 of the bounded training data (and validation data): what a checkpoint was trained on."""
    h = hashlib.sha256()
    if bd.streamed:  # one pass over the file, chunk by chunk
        for bt in bd.chunks():
            for t in (bt.x, bt.lower, bt.upper):
                h.update(t.contiguous().numpy().tobytes())
        parts = [bd.y] + ([bd.label_sets] if bd.label_sets is not None else [])
    else:
        parts = [bd.x, bd.lower, bd.upper, bd.y] + ([bd.label_sets] if bd.label_sets is not None else [])
    parts += list(val) if val is not None else []
    for t in parts:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    h.update(repr(bd.k).encode())
    return h.hexdigest()
