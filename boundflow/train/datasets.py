"""Embedded datasets (from scikit-learn, no download) and loaders for a user's files.

Every loader returns a :class:`Dataset` with float64 features and int64 labels (float64 targets
for regression, :func:`load_file`'s ``regression``), split into a training and a test part
deterministically (``seed``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Dataset", "load_dataset", "load_file", "DATASETS"]


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor | np.ndarray  # a numpy.memmap for a streamed folder (load_file)
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def regression(self) -> bool:
        return self.y_train.is_floating_point()

    @property
    def n_classes(self) -> int:
        """Classes; for regression, 1."""
        if self.regression:
            return 1
        return int(max(self.y_train.max().item(), self.y_test.max().item() if self.y_test.numel() else 0)) + 1

    @property
    def n_outputs(self) -> int:
        """Regression: the targets per sample."""
        return 1 if self.y_train.dim() == 1 else self.y_train.shape[1]

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def _split(name: str, x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float) -> Dataset:
    from sklearn.model_selection import train_test_split

    regression = y.dtype.kind == "f"
    strat = None if regression else y
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=strat)
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)  # noqa: E731
    lab = t if regression else (lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.int64))  # noqa: E731
    return Dataset(name, t(x_tr), lab(y_tr), t(x_te), lab(y_te))


def _standardise(d: Dataset) -> Dataset:
    """Zero mean, unit variance with statistics of the training part only."""
    mu, sd = d.x_train.mean(0), d.x_train.std(0).clamp(min=1e-12)
    return Dataset(d.name, (d.x_train - mu) / sd, d.y_train, (d.x_test - mu) / sd, d.y_test)


def _moons(seed: int, n: int, test_fraction: float) -> Dataset:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=0.1, random_state=seed)
    return _split("moons", x, y, seed, test_fraction)


def _digits(classes: tuple[int, ...] | None, seed: int, test_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data / 16.0, d.target
    name = "digits"
    if classes is not None:
        keep = np.isin(y, classes)
        x, y = x[keep], np.searchsorted(np.array(classes), y[keep])
        name = f"digits-{'v'.join(map(str, classes))}"
    return _split(name, x, y, seed, test_fraction)


def _breast_cancer(seed: int, test_fraction: float) -> Dataset:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return _standardise(_split("breast-cancer", d.data, d.target, seed, test_fraction))


def _iris(seed: int, test_fraction: float) -> Dataset:
    from sklearn.datasets import load_iris

    d = load_iris()
    return _standardise(_split("iris", d.data, d.target, seed, test_fraction))


DATASETS = ("moons", "digits", "digits-1v7", "digits-0v6", "breast-cancer", "iris")


def load_dataset(name: str, *, seed: int = 0, n_samples: int = 1000, test_fraction: float = 0.25) -> Dataset:
    """One of :data:`DATASETS` (``digits-AvB`` for any two digits).  ``n_samples`` applies to
    Two-Moons (noise 0.1); features of digits are scaled to [0, 1], of breast cancer and iris
    standardised."""
    if name == "moons":
        return _moons(seed, n_samples, test_fraction)
    if name == "digits":
        return _digits(None, seed, test_fraction)
    if name.startswith("digits-") and "v" in name:
        a, b = name[len("digits-") :].split("v")
        return _digits((int(a), int(b)), seed, test_fraction)
    if name == "breast-cancer":
        return _breast_cancer(seed, test_fraction)
    if name == "iris":
        return _iris(seed, test_fraction)
    raise ValueError(f"unknown dataset {name!r}; embedded: {', '.join(DATASETS)} (or digits-AvB), or pass a file")


def load_file(path: str | Path, *, seed: int = 0, test_fraction: float = 0.25, regression: bool = False) -> Dataset:
    """A user's data: ``.npz`` with arrays ``x`` and ``y`` (optionally ``x_test``, ``y_test``;
    otherwise split); a folder of ``.npy`` files ``x``, ``y``, ``x_test``, ``y_test`` whose
    training features are memory-mapped (float32 or float64; streamed batch by batch, never
    loaded whole; see :mod:`boundflow.train.bounded`); or ``.csv`` with one sample per row, the
    label in the last column and an optional header row.  Labels must be integers ``0..C-1``;
    with ``regression``, finite float targets (``y`` of shape (n,) or (n, outputs) in ``.npz``;
    one last column in ``.csv``)."""
    path = Path(path)
    labels = _targets if regression else _labels
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.is_dir():
        return _streamed(path, regression)
    if path.suffix == ".npz":
        with np.load(path) as z:
            missing = [k for k in ("x", "y") if k not in z]
            if missing:
                raise ValueError(
                    f"{path}: missing array(s) {missing}; expected 'x' and 'y' (and optionally 'x_test', 'y_test')"
                )
            x, y = np.asarray(z["x"], dtype=np.float64), labels(z["y"], f"{path} (y)")
            if len(y) != len(x):
                raise ValueError(f"{path}: {len(x)} samples in x but {len(y)} labels in y")
            if "x_test" in z and "y_test" in z:
                test = _tensors(z["x_test"], z["y_test"], f"{path} (y_test)", regression)
                return _checked(path, Dataset(path.stem, *_tensors(x, y, "data", regression), *test))
        return _checked(path, _split(path.stem, x.reshape(len(x), -1), y, seed, test_fraction))
    if path.suffix == ".csv":
        rows: list[list[float]] = []
        with open(path, newline="") as f:
            for lineno, row in enumerate(csv.reader(f), start=1):
                if not row or all(not c.strip() for c in row):
                    continue
                try:
                    rows.append([float(c) for c in row])
                except ValueError:
                    if lineno == 1 and not rows:
                        continue  # header
                    raise ValueError(f"{path}:{lineno}: non-numeric value in row {row!r}") from None
                if len(rows[-1]) != len(rows[0]):
                    raise ValueError(f"{path}:{lineno}: {len(rows[-1])} columns, expected {len(rows[0])}")
        if not rows:
            raise ValueError(f"{path}: no data rows")
        a = np.asarray(rows)
        return _checked(
            path, _split(path.stem, a[:, :-1], labels(a[:, -1], f"{path} (last column)"), seed, test_fraction)
        )
    raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .npz or .csv")


STREAMED_FILES = ("x.npy", "y.npy", "x_test.npy", "y_test.npy")


def _streamed(path: Path, regression: bool) -> Dataset:
    """A folder of ``.npy`` files: ``x`` memory-mapped, the rest loaded."""
    missing = [f for f in STREAMED_FILES if not (path / f).is_file()]
    if missing:
        raise ValueError(
            f"{path}: a streamed data folder needs {', '.join(STREAMED_FILES)}; missing {', '.join(missing)}"
        )
    x = np.load(path / "x.npy", mmap_mode="r")
    if x.dtype.kind != "f" or x.ndim != 2:
        raise ValueError(f"{path / 'x.npy'}: expected float features of shape (n, features), got {x.dtype} {x.shape}")
    labels = _targets if regression else _labels
    y = labels(np.load(path / "y.npy"), f"{path / 'y.npy'}")
    if len(y) != len(x):
        raise ValueError(f"{path}: {len(x)} samples in x.npy but {len(y)} labels in y.npy")
    x_test, y_test = _tensors(
        np.load(path / "x_test.npy"), np.load(path / "y_test.npy"), f"{path} (y_test)", regression
    )
    if x_test.shape[1] != x.shape[1]:
        raise ValueError(f"{path}: x_test.npy has {x_test.shape[1]} features, x.npy {x.shape[1]}")
    if not torch.isfinite(x_test).all():
        raise ValueError(f"{path}: x_test contains NaN or inf")
    return Dataset(path.name, x, torch.as_tensor(y), x_test, y_test)


def _labels(y, where: str) -> np.ndarray:
    """Integer class labels (:func:`boundflow.train.bounded._labels`); errors name ``where``."""
    from boundflow.train.bounded import _labels as check

    y = np.asarray(y)
    if y.dtype.kind not in "iufb":
        raise ValueError(f"{where}: labels must be integer class indices 0..C-1, got dtype {y.dtype}")
    try:
        return check(torch.as_tensor(y)).numpy()
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _targets(y, where: str) -> np.ndarray:
    """Finite float regression targets; errors name ``where``."""
    y = np.asarray(y)
    if y.dtype.kind not in "iuf":
        raise ValueError(f"{where}: regression targets must be numbers, got dtype {y.dtype}")
    y = y.astype(np.float64)
    bad = np.nonzero(~np.isfinite(y.reshape(len(y), -1)).all(1))[0]
    if len(bad):
        raise ValueError(f"{where}: regression target of sample {int(bad[0])} is not finite")
    return y


def _tensors(x, y, where: str = "data", regression: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.asarray(x, dtype=np.float64)
    y = _targets(y, where) if regression else _labels(y, where)
    return torch.as_tensor(x.reshape(len(x), -1)), torch.as_tensor(y)


def _checked(path: Path, d: Dataset) -> Dataset:
    for name, t in (("x", d.x_train), ("x_test", d.x_test)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{path}: {name} contains NaN or inf in {int((~torch.isfinite(t)).sum())} entries")
    for name, y in (("y", d.y_train), ("y_test", d.y_test)):
        if not d.regression and y.numel() and y.min() < 0:
            raise ValueError(f"{path}: labels in {name} must be 0..C-1, found {int(y.min())}")
    return d
