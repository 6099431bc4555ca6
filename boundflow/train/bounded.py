"""Bounded datasets: the *set* of training sets a threat model allows.

A :class:`BoundedDataset` holds the nominal data, per-sample feature bounds, optional per-sample
label sets, and a per-batch budget ``k``: with ``k=None`` every sample may take any value in its
bounds at once; with an integer ``k`` at most ``k`` samples of each batch deviate from the
nominal data (the others are exactly nominal).  ``budget`` says what the ``k`` samples may do:
``"modify"`` (move within their bounds and label sets), ``"remove"`` (be left out of the batch:
certified unlearning) or ``"substitute"`` (be replaced by anything: privacy-style bounds, which
need per-sample gradient clipping, ``TrainConfig.clip``).  Labels are class indices (classification) or,
with ``regression=True``, float targets ``(n,)`` or ``(n, outputs)`` (trained with ``mse``).

``linf``, ``poison`` and ``label_flip`` take features and labels, or a
``torch.utils.data.Dataset``/``DataLoader`` of ``(features, label)`` pairs as ``x`` with
``y=None`` (:func:`from_torch`).

Streamed data: features given as a ``numpy.memmap`` (``np.load(path, mmap_mode="r")``) stay on
disk; training reads them batch by batch (:meth:`BoundedDataset.batch`) and makes each
sample's box from ``eps`` (and ``clamp``) as it goes, so memory does not grow with the dataset
(the labels are held in memory)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "BoundedDataset",
    "BUDGETS",
    "linf",
    "linf_subset",
    "poison",
    "label_flip",
    "missing",
    "removal",
    "substitution",
    "from_torch",
    "Batch",
]

BUDGETS = ("modify", "remove", "substitute")


@dataclass
class Batch:
    """One batch of a :class:`BoundedDataset` as float64 tensors (labels as stored)."""

    x: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    y: torch.Tensor
    label_sets: torch.Tensor | None


@dataclass
class BoundedDataset:
    """``x``: nominal features (n, ...), a tensor or a ``numpy.memmap`` (streamed);
    ``lower``/``upper``: feature bounds containing ``x``, or both ``None`` for the box
    ``x ± eps`` clipped to ``clamp``, made per batch; ``y``: nominal labels (n,) — integer class
    indices, or float regression targets (n,) or (n, outputs); ``label_sets``: optional bool
    (n, C), True where a label is possible (must include the nominal label; classification
    only); ``k``: per-batch budget of deviating samples (``None``: all may deviate); ``budget``:
    what those ``k`` samples may do (``modify``, ``remove``, ``substitute``; see the module);
    ``threat``: a short description."""

    x: torch.Tensor | np.ndarray
    lower: torch.Tensor | None
    upper: torch.Tensor | None
    y: torch.Tensor
    label_sets: torch.Tensor | None = None
    k: int | None = None
    threat: str = "linf"
    budget: str = "modify"
    eps: float | None = None
    clamp: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if (self.lower is None) != (self.upper is None):
            raise ValueError("BoundedDataset: give both lower and upper, or neither (with eps)")
        if self.lower is None:
            if self.eps is None or not self.eps >= 0:
                raise ValueError(f"BoundedDataset: without lower/upper, eps must be a radius >= 0, got {self.eps}")
        elif self.streamed:
            raise ValueError("BoundedDataset: streamed features take their boxes from eps, not lower/upper tensors")
        elif self.x.shape != self.lower.shape or self.x.shape != self.upper.shape:
            raise ValueError(
                f"BoundedDataset: x {tuple(self.x.shape)}, lower {tuple(self.lower.shape)} and upper "
                f"{tuple(self.upper.shape)} must have the same shape"
            )
        if self.streamed:
            self._check_stream()
        if self.y.is_complex() or self.y.dtype == torch.bool:
            raise ValueError(f"BoundedDataset: labels y must be class indices or float targets, got {self.y.dtype}")
        n = self.x.shape[0]
        if self.regression:
            if self.y.dim() not in (1, 2) or self.y.shape[0] != n:
                raise ValueError(
                    f"BoundedDataset: regression targets y have shape {tuple(self.y.shape)}, expected "
                    f"({n},) or ({n}, outputs)"
                )
            if not torch.isfinite(self.y).all():
                bad = int((~torch.isfinite(self.y)).sum())
                raise ValueError(f"BoundedDataset: {bad} regression targets are not finite")
            if self.label_sets is not None:
                raise ValueError("BoundedDataset: label sets are for class labels, not regression targets")
        elif self.y.shape != (n,):
            raise ValueError(f"BoundedDataset: y has shape {tuple(self.y.shape)}, expected ({n},)")
        if self.lower is not None:
            bad = (self.lower > self.x) | (self.x > self.upper)
            if bad.any():
                raise ValueError(f"BoundedDataset: nominal x outside [lower, upper] in {int(bad.sum())} entries")
        if self.label_sets is not None:
            if self.label_sets.shape[0] != len(self.y):
                raise ValueError("BoundedDataset: label_sets must have one row per sample")
            if not self.label_sets[torch.arange(len(self.y)), self.y].all():
                raise ValueError("BoundedDataset: every label set must contain the nominal label")
        if self.k is not None and self.k < 0:
            raise ValueError(f"BoundedDataset: k must be >= 0, got {self.k}")
        if self.budget not in BUDGETS:
            raise ValueError(f"BoundedDataset: budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        if self.budget != "modify":
            if self.k is None:
                raise ValueError(f"BoundedDataset: budget {self.budget!r} needs a per-batch count k")
            exact = (
                self.eps == 0
                if self.lower is None
                else torch.equal(self.lower, self.x) and torch.equal(self.upper, self.x)
            )
            if self.label_sets is not None or not exact:
                raise ValueError(
                    f"BoundedDataset: budget {self.budget!r} takes exact features and labels (the k samples are "
                    "removed or replaced whole)"
                )

    STREAM_CHUNK = 1 << 16

    @property
    def streamed(self) -> bool:
        """Features read from disk batch by batch (a ``numpy.memmap``) rather than held in memory."""
        return not isinstance(self.x, torch.Tensor)

    def _check_stream(self) -> None:
        """One pass over streamed features, before any training: finite, real, inside ``clamp``."""
        if not isinstance(self.x, np.ndarray) or self.x.dtype.kind != "f" or self.x.ndim < 2:
            raise ValueError(
                f"BoundedDataset: streamed features must be a float numpy array (n, features...), got "
                f"{type(self.x).__name__} {getattr(self.x, 'dtype', '')} {getattr(self.x, 'shape', '')}"
            )
        for s in range(0, self.x.shape[0], self.STREAM_CHUNK):
            part = np.asarray(self.x[s : s + self.STREAM_CHUNK])
            bad = ~np.isfinite(part.reshape(len(part), -1)).all(1)
            if bad.any():
                raise ValueError(f"BoundedDataset: features of sample {s + int(np.argmax(bad))} are not finite")
            if self.clamp is not None:
                out = ((part < self.clamp[0]) | (part > self.clamp[1])).reshape(len(part), -1).any(1)
                if out.any():
                    raise ValueError(
                        f"BoundedDataset: sample {s + int(np.argmax(out))} has features outside clamp {self.clamp}"
                    )

    def batch(self, idx: torch.Tensor) -> Batch:
        """The samples ``idx`` (an index tensor) as float64 tensors, with their boxes."""
        if self.streamed:
            x = torch.from_numpy(np.asarray(self.x[np.sort(idx.numpy())], dtype=np.float64))
            if not bool((idx[1:] >= idx[:-1]).all()):  # read in file order, return in idx's order
                x = x[torch.argsort(torch.argsort(idx))]
        else:
            x = self.x[idx]
        if self.lower is None:
            lo, hi = _box(x, self.eps, self.clamp)
        else:
            lo, hi = self.lower[idx], self.upper[idx]
        sets = self.label_sets[idx] if self.label_sets is not None else None
        return Batch(x, lo, hi, self.y[idx], sets)

    def chunks(self, size: int | None = None) -> Iterator[Batch]:
        """Every sample, in order, ``size`` at a time."""
        size = size or self.STREAM_CHUNK
        for s in range(0, len(self), size):
            yield self.batch(torch.arange(s, min(s + size, len(self))))

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def regression(self) -> bool:
        """Float targets (trained with ``mse``, certified by error bounds) rather than classes."""
        return self.y.is_floating_point()

    @property
    def n_classes(self) -> int:
        """Classes (at least the largest label + 1); 1 for regression."""
        if self.regression:
            return 1
        if self.label_sets is not None:
            return self.label_sets.shape[1]
        return int(self.y.max().item()) + 1


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def from_torch(data, regression: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` from a ``torch.utils.data.Dataset`` of ``(features, label)`` pairs or a
    ``DataLoader`` over one (every batch, in the loader's order).  Training then follows
    BoundFlow's own batch order (:func:`~boundflow.train.trainer.batch_indices`), which is
    what the certificate is about, not the loader's shuffling.  ``regression``: the labels are
    float targets."""
    from torch.utils.data import DataLoader

    labels = _targets if regression else _labels

    if isinstance(data, DataLoader):
        xs, ys = [], []
        for k, batch in enumerate(data):
            if not isinstance(batch, list | tuple) or len(batch) != 2:
                raise ValueError(f"DataLoader batch {k}: expected (features, labels), got {type(batch).__name__}")
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]).reshape(len(batch[0]), -1))
        if not xs:
            raise ValueError("DataLoader yields no batch")
        y = torch.cat(ys)
        return torch.cat(xs).double(), labels(y.reshape(-1) if y.shape[1] == 1 else y)
    try:
        n = len(data)
    except TypeError:
        raise ValueError(f"expected a Dataset or DataLoader, got {type(data).__name__}") from None
    if n == 0:
        raise ValueError("Dataset is empty")
    items = [data[i] for i in range(n)]
    if any(not isinstance(it, list | tuple) or len(it) != 2 for it in items):
        raise ValueError("Dataset items must be (features, label) pairs")
    x = torch.stack([torch.as_tensor(it[0]) for it in items]).double()
    y = torch.stack([torch.as_tensor(it[1]).reshape(-1) for it in items])
    return x, labels(y.reshape(-1) if y.shape[1] == 1 else y)


def _data(x, y, regression: bool = False):
    """``(x, y)`` from tensors/arrays, or from a Dataset/DataLoader passed as ``x`` with ``y=None``;
    a ``numpy.memmap`` stays on disk (streamed)."""
    if y is None:
        x, y = from_torch(x, regression)
    if not isinstance(x, np.memmap):
        x = _f64(x)
    return x, (_targets(y) if regression else _labels(y))


def _boxed(x, y, eps: float, clamp, **kw) -> BoundedDataset:
    """The dataset whose samples may move by ``eps`` (clipped to ``clamp``): boxes made per batch
    for streamed features, held as tensors otherwise."""
    if isinstance(x, np.memmap):
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        return BoundedDataset(x, None, None, y, eps=float(eps), clamp=clamp, **kw)
    lo, hi = _box(x, eps, clamp)
    return BoundedDataset(x, lo, hi, y, **kw)


def _targets(y) -> torch.Tensor:
    """Regression targets as float64 ``(n,)`` or ``(n, outputs)``; every one finite."""
    y = torch.as_tensor(y)
    if y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"regression targets must be real numbers, got dtype {y.dtype}")
    y = y.to(torch.float64)
    bad = torch.nonzero(~torch.isfinite(y.reshape(len(y), -1)).all(1)).reshape(-1)
    if len(bad):
        raise ValueError(f"regression targets must be finite, sample {int(bad[0])} is not")
    return y


def _labels(y) -> torch.Tensor:
    """Class indices as int64; float labels must be integral (``1.0``, not ``0.7``)."""
    y = torch.as_tensor(y)
    if y.is_floating_point():
        bad = torch.nonzero(~torch.isfinite(y) | (y != y.round())).reshape(-1)
        if len(bad):
            i = int(bad[0])
            raise ValueError(
                f"labels must be integer class indices 0..C-1, found {float(y[i])!r} at sample {i} "
                "(float regression targets: regression=True, or boundflow train --regression)"
            )
    elif y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"labels must be integer class indices 0..C-1, got dtype {y.dtype}")
    y = y.to(torch.int64)
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"labels must be integer class indices 0..C-1, found {int(y.min())}")
    return y


def _box(x: torch.Tensor, eps: float, clamp: tuple[float, float] | None):
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    lo, hi = x - eps, x + eps
    if clamp is not None:
        lo, hi = lo.clamp(*clamp), hi.clamp(*clamp)
    return lo, hi


def linf(x, y, eps: float, clamp: tuple[float, float] | None = None, regression: bool = False) -> BoundedDataset:
    """Every sample's features may move by up to ``eps`` in ℓ∞ (FullCert's threat model),
    optionally clipped to ``clamp``.  ``regression``: ``y`` are float targets."""
    x, y = _data(x, y, regression)
    return _boxed(x, y, eps, clamp, threat=f"linf(eps={eps})")


def linf_subset(
    x, y, eps: float, indices: Sequence[int], clamp: tuple[float, float] | None = None, regression: bool = False
) -> BoundedDataset:
    """Only the samples in ``indices`` may move by ``eps``; the rest are exact."""
    x = _f64(x)
    lo, hi = x.clone(), x.clone()
    idx = torch.as_tensor(list(indices), dtype=torch.int64)
    if idx.numel() and (idx.min() < 0 or idx.max() >= len(x)):
        raise IndexError(f"linf_subset: indices must be in [0, {len(x)}), got {idx.min().item()}..{idx.max().item()}")
    blo, bhi = _box(x[idx], eps, clamp)
    lo[idx], hi[idx] = blo, bhi
    y = _targets(y) if regression else _labels(y)
    return BoundedDataset(x, lo, hi, y, threat=f"linf_subset(eps={eps}, n={len(idx)})")


def poison(
    x, y, k: int, eps: float, clamp: tuple[float, float] | None = None, regression: bool = False
) -> BoundedDataset:
    """At most ``k`` samples of each batch may move by ``eps`` in ℓ∞ (Abstract Gradient
    Training's bounded poisoning); the batch gradient is bounded by the ``k`` largest (smallest)
    per-sample deviations per parameter.  ``regression``: ``y`` are float targets."""
    x, y = _data(x, y, regression)
    return _boxed(x, y, eps, clamp, k=int(k), threat=f"poison(k={k}, eps={eps})")


def label_flip(x, y, k: int, n_classes: int | None = None) -> BoundedDataset:
    """At most ``k`` labels of each batch may be changed to any other class."""
    x, y = _data(x, y)
    c = n_classes or int(y.max().item()) + 1
    sets = torch.ones(len(y), max(c, 2), dtype=torch.bool)
    return _boxed(x, y, 0.0, None, label_sets=sets, k=int(k), threat=f"label_flip(k={k})")


def missing(
    x, y, features: Sequence[int], ranges: Sequence[tuple[float, float]], regression: bool = False
) -> BoundedDataset:
    """The listed features (of every sample) may take any value in their range (e.g. missing or
    imputed values)."""
    x = _f64(x)
    if len(features) != len(ranges):
        raise ValueError(f"missing: {len(features)} features but {len(ranges)} ranges")
    lo, hi = x.clone(), x.clone()
    for f, (a, b) in zip(features, ranges, strict=True):
        if a > b:
            raise ValueError(f"missing: empty range ({a}, {b}) for feature {f}")
        lo[:, f] = torch.minimum(lo[:, f], torch.tensor(float(a), dtype=torch.float64))
        hi[:, f] = torch.maximum(hi[:, f], torch.tensor(float(b), dtype=torch.float64))
    y = _targets(y) if regression else _labels(y)
    return BoundedDataset(x, lo, hi, y, threat=f"missing(features={list(features)})")


def removal(x, y, k: int, regression: bool = False) -> BoundedDataset:
    """Up to ``k`` samples of each batch may be removed (certified unlearning, as in Abstract
    Gradient Training): the box holds the parameters that training reaches on every dataset
    with at most ``k`` samples of each batch left out, the batch mean taken over the samples
    that remain (the batches themselves do not shift).  ``k`` must be below the batch size."""
    x, y = _data(x, y, regression)
    return _boxed(x, y, 0.0, None, k=int(k), threat=f"removal(k={k})", budget="remove")


def substitution(x, y, k: int, regression: bool = False) -> BoundedDataset:
    """Up to ``k`` samples of each batch may be replaced by arbitrary samples (any features,
    any label): the privacy-style threat of Abstract Gradient Training.  Only bounded with
    per-sample gradient clipping (``TrainConfig(clip=...)``), which bounds what one replaced
    sample can contribute."""
    x, y = _data(x, y, regression)
    return _boxed(x, y, 0.0, None, k=int(k), threat=f"substitution(k={k})", budget="substitute")
