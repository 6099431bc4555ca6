"""Certified training (FullCert, with bounded poisoning and label flipping as in Abstract
Gradient Training): ordinary PyTorch training on interval data and interval parameters."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from boundflow import rounding
from boundflow.domains.interval import IntervalTensor, arith, lohi
from boundflow.train.bounded import BoundedDataset
from boundflow.train.certify import certify, error_bounds
from boundflow.train.losses import LOSSES, Target, bounded_loss, plain_loss
from boundflow.train.optim import IntervalSGD

__all__ = [
    "TrainConfig",
    "ParameterBounds",
    "certified_training",
    "batch_indices",
    "plain_gradients",
    "lr_at",
    "TrainingDiverged",
    "METHODS",
]

METHODS = ("ibp", "lp", "milp", "mibp")


@dataclass
class TrainConfig:
    """``loss``: ``bce`` (one logit, labels 0/1), ``cross_entropy``, ``hinge`` (one logit) or
    ``mse``.  Batch order: with ``shuffle=False`` batch ``i`` is samples ``[i*B, (i+1)*B)`` and an
    incomplete last batch is dropped; with ``shuffle=True`` the same on a permutation drawn from
    ``seed`` and the epoch (see :func:`batch_indices`).  ``pretrain_epochs``: ordinary training on
    the *nominal* data first; the certificate then covers only the certified epochs that follow
    (the pretraining data must be trusted).  ``lr_decay``: epoch ``e`` (counting pretraining
    epochs, from 0) uses ``lr * lr_decay**e``, in the bounded and the nominal run alike.

    Which box is kept (needs validation data, ``certified_training(val=...)``): ``keep_best``
    keeps the box of the epoch with the best validation certified accuracy (the earliest on
    ties); ``stop_drop`` stops once it falls more than that below the best (FullCert's rule,
    0.05); ``patience`` stops after that many epochs without improvement.  The kept box of
    epoch ``e`` holds every parameter vector that ``e`` epochs of this training reach from any
    dataset in the threat model; the epoch is chosen from the bounds alone, not from any
    concrete dataset, so stopping concrete training at ``e`` is covered.

    ``clip``: per-sample gradient clipping (Abstract Gradient Training's ``clip_method="clamp"``,
    as in DP-SGD without noise): every sample's gradient is clamped elementwise to
    ``[-clip, clip]`` before the batch mean, in the bounded and the nominal run alike.  It
    bounds what any one sample can contribute; ``substitution`` datasets need it.

    ``step``: how each step's parameter box is bounded: ``ibp`` (interval arithmetic, FullCert;
    ``interval`` is accepted) or a solver program per step, ``lp``, ``milp``, ``mibp``
    (MIBP-Cert).  ``method`` is its old name, accepted with a ``DeprecationWarning`` and kept
    equal to ``step``.

    Solver steps (``lp``, ``milp``, ``mibp``): ``decompose`` is how a batch's step is split
    into programs: ``True`` one per sample, ``False`` MIBP-Cert's joint program, an int ``G``
    programs of ``G`` samples (see :func:`boundflow.encode.training_step.build_step`)."""

    epochs: int
    lr: float
    batch_size: int
    loss: str = "bce"
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    shuffle: bool = False
    pretrain_epochs: int = 0
    step: str = "ibp"
    workers: int = 1
    executor: str = "process"
    address: str | None = None
    time_limit: float | None = None
    decompose: bool | int = True
    lr_decay: float = 1.0
    keep_best: bool = False
    stop_drop: float | None = None
    patience: int | None = None
    clip: float | None = None
    method: str | None = None  # the old name of ``step``

    def __post_init__(self) -> None:
        if self.method is not None and self.method != self.step:
            if self.step != "ibp":
                raise ValueError(f"TrainConfig: step={self.step!r} and method={self.method!r}; give step= only")
            warnings.warn(
                "TrainConfig(method=...) is now TrainConfig(step=...) (method= will go)",
                DeprecationWarning,
                stacklevel=3,
            )
            self.step = self.method
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be > 0 (or None: no clipping), got {self.clip}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.stop_drop is not None and not self.stop_drop >= 0:
            raise ValueError(f"stop_drop must be >= 0, got {self.stop_drop}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 epoch, got {self.patience}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        from boundflow.domains.registry import canonical_method

        self.step = canonical_method(self.step)  # "interval" (FullCert's name) is "ibp"
        if self.step not in METHODS:
            raise ValueError(f"unknown training step {self.step!r}; choose from {', '.join(METHODS)}")
        self.method = self.step
        if self.step != "ibp":
            from boundflow.encode.training_step import MIBP_LOSSES

            if self.loss not in MIBP_LOSSES:
                raise ValueError(f"step={self.step!r} supports losses {', '.join(MIBP_LOSSES)}, not {self.loss!r}")
            if self.momentum:
                raise ValueError(f"step={self.step!r} supports SGD without momentum (momentum={self.momentum})")
            if self.clip is not None:
                raise ValueError(f"step={self.step!r} does not model gradient clipping (clip={self.clip})")
        if not (isinstance(self.decompose, bool) or (isinstance(self.decompose, int) and self.decompose >= 1)):
            raise ValueError(f"decompose must be True, False or a group size >= 1, got {self.decompose!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.pretrain_epochs < 0:
            raise ValueError("epochs and pretrain_epochs must be >= 0 and batch_size >= 1")


@dataclass
class ParameterBounds:
    """Every parameter vector reachable by the configured training from any dataset in the
    bounded dataset lies in ``[lower, upper]`` (per name).  ``nominal``: the parameters
    trained on the nominal data.  ``history``: per-epoch metrics."""

    lower: dict[str, torch.Tensor]
    upper: dict[str, torch.Tensor]
    nominal: dict[str, torch.Tensor]
    epochs_done: int = 0
    diverged_at: int | None = None
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # the kept box: {"epoch", "score", "lower", "upper", "nominal"}
    stopped_at: int | None = None  # the epoch after which early stopping ended training

    def kept(self) -> ParameterBounds:
        """The box selection kept (``TrainConfig.keep_best``): the best validation epoch's box,
        with ``epochs_done`` that epoch; without a selection, these bounds themselves."""
        if self.best is None:
            return self
        b = self.best
        return ParameterBounds(
            {n: t.clone() for n, t in b["lower"].items()},
            {n: t.clone() for n, t in b["upper"].items()},
            {n: t.clone() for n, t in b["nominal"].items()},
            b["epoch"],
            None,
            [h for h in self.history if h["epoch"] <= b["epoch"]],
        )

    def mean_width(self) -> float:
        tot = sum((self.upper[n] - self.lower[n]).sum().item() for n in self.lower)
        cnt = sum(self.lower[n].numel() for n in self.lower)
        return tot / max(cnt, 1)

    def contains(self, params: dict[str, torch.Tensor], atol: float = 0.0) -> bool:
        return all(
            bool(((params[n] >= self.lower[n] - atol) & (params[n] <= self.upper[n] + atol)).all()) for n in self.lower
        )


class TrainingDiverged(RuntimeWarning):
    """Bounds became non-finite; training stopped with the last finite (sound) bounds."""


def batch_indices(n: int, config: TrainConfig, epoch: int) -> list[torch.Tensor]:
    """The batches of one epoch (the contract replays follow)."""
    order = torch.arange(n)
    if config.shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
    nb = n // config.batch_size
    return [order[i * config.batch_size : (i + 1) * config.batch_size] for i in range(nb)]


def lr_at(config: TrainConfig, epoch: int) -> float:
    """The learning rate of (0-based, pretraining included) epoch ``epoch``."""
    return config.lr * config.lr_decay**epoch


def _interval_grads(model, params, data: BoundedDataset, idx, config, n_classes) -> None:
    """Fill ``params[*].grad`` with bounds on the batch gradient over the threat model.

    Per-sample gradients ``g_i`` (each sample's share ``loss_i / b`` of the batch mean; clamped
    to ``[-clip/b, clip/b]`` with clipping, a monotone map of each bound) combine per budget:

    * every sample within its bounds (``k=None``): their sum;
    * ``modify`` (at most ``k`` deviate): the nominal samples' sum plus the ``k`` largest
      (smallest) deviations per parameter;
    * ``remove`` (at most ``k`` left out, the mean over the ``m >= b - k`` that remain): the
      mean of a subset is at least the mean of its ``m`` smallest values, which grows with
      ``m``, so ``b / (b - k)`` times the sum of the ``b - k`` smallest (largest) bounds;
    * ``substitute`` (at most ``k`` replaced by anything): the ``b - k`` smallest (largest)
      nominal bounds plus ``k`` times the clipping bound."""
    bt = data.batch(idx)
    x_lo, x_hi, y, sets = bt.lower, bt.upper, bt.y, bt.label_sets
    clip = config.clip
    if data.k is None and clip is None:
        out = functional_call(model, params, (IntervalTensor(x_lo, x_hi, check=False),))
        bounded_loss(out, Target(y, sets, n_classes), config.loss).backward()
        return
    b = len(idx)
    sound = rounding.rounding_enabled()
    if clip is None:
        c_in = c_out = None
    else:  # [-c_out, c_out] holds the clip / b of exact arithmetic, [-c_in, c_in] lies inside it
        c = clip / b
        c_in, c_out = (math.nextafter(c, 0.0), math.nextafter(c, math.inf)) if sound else (c, c)

    def clamp(g):
        if c_in is None:
            return g
        return g[0].clamp(-c_out, c_in), g[1].clamp(-c_in, c_out)

    if data.k is None:  # every sample deviates; per-sample only to clip
        dev = _per_sample_grads(model, params, IntervalTensor(x_lo, x_hi), Target(y, sets, n_classes), config.loss, b)
        for n in params:
            params[n].grad = IntervalTensor(*arith.reduce_sum(clamp(dev[n]), [0]), check=False)
        return
    clean = _per_sample_grads(model, params, IntervalTensor.exact(bt.x), Target(y, None, n_classes), config.loss, b)
    k = min(data.k, b)
    if data.budget == "remove" and k >= b:
        raise ValueError(
            f"removal of k={data.k} samples from a batch of {b} leaves none; k must be below the batch size"
        )
    if data.budget == "modify":
        dev = _per_sample_grads(model, params, IntervalTensor(x_lo, x_hi), Target(y, sets, n_classes), config.loss, b)
    for n in params:
        c_lo, c_hi = clamp(clean[n])
        lo, hi = arith.reduce_sum((c_lo, c_hi), [0])
        if k and data.budget == "modify":
            d_lo, d_hi = clamp(dev[n])
            dl = (d_lo - c_lo).clamp(max=0).topk(k, dim=0, largest=False).values
            dh = (d_hi - c_hi).clamp(min=0).topk(k, dim=0, largest=True).values
            lo, hi = arith.add((lo, hi), arith.reduce_sum((dl, dh), [0]))
        elif k:  # leave out the k largest lower (smallest upper) bounds
            left_out = (-c_lo.topk(k, dim=0, largest=True).values, -c_hi.topk(k, dim=0, largest=False).values)
            lo, hi = arith.add((lo, hi), arith.reduce_sum(left_out, [0]))
            if data.budget == "remove":  # the mean over the b - k that remain
                lo, hi = lo * (b / (b - k)), hi * (b / (b - k))
                if sound:  # the factor's rounding and the product's
                    lo, hi = rounding.widen_rel(lo, hi, 3)
            else:
                extra = k * c_out
                if sound:
                    extra = math.nextafter(extra, math.inf)
                lo, hi = arith.add((lo, hi), (torch.full_like(lo, -extra), torch.full_like(hi, extra)))
        params[n].grad = IntervalTensor(lo, hi, check=False)


def _batched_layers(model: nn.Module, params) -> dict[str, nn.Module] | None:
    """``{module name: layer}`` when every parameter is the weight or bias of an ``nn.Linear``
    or of an ``nn.Conv2d`` with one group, zero padding given as numbers (then per-sample
    gradients are sums of outer products of per-sample quantities); else None."""
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) or (
            isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)
        ):
            layers[name] = m
        elif next(m.parameters(recurse=False), None) is not None:
            return None
    owned = {f"{n}.weight" for n in layers} | {f"{n}.bias" for n, m in layers.items() if m.bias is not None}
    return layers if owned == set(params) else None


def _per_sample_grads(model, params, x: IntervalTensor, target: Target, loss: str, b: int) -> dict:
    """``{name: (lo, hi)}`` of shape ``(b, *param.shape)``: bounds on each sample's gradient
    of ``loss / b`` (its share of the batch mean).

    Models whose parameters all sit in ``nn.Linear`` layers (each called once, on a batch of
    vectors) and ``nn.Conv2d`` layers (one group, zero padding; each called once, on a batch of
    images): one batched forward and backward pass to the layers' outputs, then each sample's
    weight gradient as the interval product of its output gradient and its input (for a
    convolution, its input's patches, summed over the output positions) — the terms of a
    one-sample backward pass, whose batch rows are independent.  Other models: one forward
    and backward pass per sample."""
    layers = _batched_layers(model, params)
    if layers is not None:
        seen: dict[str, tuple] = {}

        def hook(name):
            def record(mod, inputs, output):
                want = 2 if isinstance(mod, nn.Linear) else 4
                if name in seen or inputs[0].dim() != want:
                    seen[name] = None  # called twice, or not on vectors / images: use the loop
                else:
                    seen[name] = (inputs[0], output)

            return record

        handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
        try:
            out = functional_call(model, params, (x,))
        finally:
            for h in handles:
                h.remove()
        if len(seen) == len(layers) and all(v is not None for v in seen.values()):
            names = list(seen)
            outs = [seen[n][1] for n in names]
            # the batch mean: each row gets its sample's gradient of loss / b
            grads = torch.autograd.grad(bounded_loss(out, target, loss), outs, allow_unused=True)
            res = {}
            for n, g in zip(names, grads):
                inp, layer = seen[n][0], layers[n]
                if g is None:
                    g = IntervalTensor.exact(torch.zeros_like(lohi(outs[names.index(n)])[0]))
                if isinstance(layer, nn.Linear):
                    w, gb = torch.bmm(g.unsqueeze(2), inp.unsqueeze(1)), g  # (b, out, in), (b, out)
                else:
                    w, gb = _conv_weight_grads(layer, g, inp)
                res[f"{n}.weight"] = tuple(t.detach() for t in lohi(w))
                if layer.bias is not None:
                    res[f"{n}.bias"] = tuple(t.detach() for t in lohi(gb))
            return res
    return _per_sample_grads_loop(model, params, x, target, loss, b)


def _conv_weight_grads(conv: nn.Conv2d, g, inp):
    """Per-sample weight and bias gradients of ``conv`` from its output gradient ``g``
    ``(b, O, H_o, W_o)`` and input ``inp`` ``(b, C, H, W)`` (intervals): the input's patches
    (an exact re-indexing of each end, zeros where padded) times the output gradient, summed
    over the output positions, ``(b, O, C, k_h, k_w)``; the bias's is the sum of ``g``."""
    b, o = g.shape[0], g.shape[1]
    lo, hi = lohi(inp)
    kw = dict(kernel_size=conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    patches = IntervalTensor(F.unfold(lo, **kw), F.unfold(hi, **kw), check=False)  # (b, C k_h k_w, L)
    w = torch.bmm(g.reshape(b, o, -1), patches.transpose(1, 2))  # (b, O, C k_h k_w)
    return w.reshape(b, *conv.weight.shape), g.sum(dim=(2, 3))


def _per_sample_grads_loop(model, params, x: IntervalTensor, target: Target, loss: str, b: int) -> dict:
    x_lo, x_hi = lohi(x)
    acc: dict[str, list] = {n: [] for n in params}
    for i in range(len(x_lo)):
        for p in params.values():
            p.grad = None
        sets = target.sets[i : i + 1] if target.sets is not None else None
        xi = IntervalTensor(x_lo[i : i + 1], x_hi[i : i + 1], check=False)
        out = functional_call(model, params, (xi,))
        (bounded_loss(out, Target(target.y[i : i + 1], sets, target.n_classes), loss) * (1.0 / b)).backward()
        for n in params:
            g = lohi(params[n].grad) if params[n].grad is not None else (torch.zeros_like(params[n].lower),) * 2
            acc[n].append((g[0].clone(), g[1].clone()))
    for p in params.values():
        p.grad = None
    return {n: (torch.stack([g[0] for g in v]), torch.stack([g[1] for g in v])) for n, v in acc.items()}


def certified_training(
    model: nn.Module,
    dataset: BoundedDataset,
    config: TrainConfig,
    *,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    test_eps: float = 0.0,
    progress: bool = False,
    start: ParameterBounds | None = None,
    on_epoch: Callable[[ParameterBounds, dict], None] | None = None,
    track_nominal: bool = True,
    executor=None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    val_eps: float = 0.0,
) -> ParameterBounds:
    """Train ``model`` (its own parameters are the start; the model is not modified) on every
    dataset in ``dataset`` at once and return the parameter box.

    Guarantee: for every concrete dataset in ``dataset`` (respecting its per-batch budget),
    ordinary SGD with ``config`` (same batch order, loss, momentum, weight decay) from the same
    start ends inside the returned box; at every epoch boundary it is inside that epoch's box.
    Sound in exact arithmetic on the float64 data (rounding of the concrete run is of the same
    order as that of the bounds).  ``start`` resumes from a checkpoint.  If bounds become
    non-finite, training stops with a :class:`TrainingDiverged` warning and the last finite
    bounds (``diverged_at`` set).  ``executor``: an executor from
    :func:`solvers.make_executor` to use (and leave open) instead of the one the
    config describes (solver methods only).  ``val``: validation data ``(x, y)``, certified
    each epoch at radius ``val_eps`` (``val_certified_accuracy`` in the history) for the
    selection and stopping rules of :class:`TrainConfig`; :meth:`ParameterBounds.kept` is
    the box they keep."""
    if (config.keep_best or config.stop_drop is not None or config.patience is not None) and val is None:
        raise ValueError("keep_best, stop_drop and patience select epochs by validation accuracy: pass val=(x, y)")
    if dataset.budget == "substitute" and config.clip is None:
        raise ValueError(
            f"dataset {dataset.threat}: replaced samples can have any gradient; bound it with per-sample clipping, "
            "TrainConfig(clip=...)"
        )
    if dataset.budget == "remove" and dataset.k >= config.batch_size:
        raise ValueError(f"dataset {dataset.threat}: k must be below the batch size {config.batch_size}")
    if dataset.regression and config.loss != "mse":
        raise ValueError(f"regression targets (float labels) train with loss='mse', not {config.loss!r}")
    dtype = torch.float64
    model = copy.deepcopy(model).to(dtype)
    n_classes = max(dataset.n_classes, 2)
    if start is None:
        nominal = {n: p.detach().clone() for n, p in model.named_parameters()}
        pre_state: dict = {}
        if config.pretrain_epochs:
            nominal, pre_state = _plain_epochs(
                model, nominal, dataset.x, dataset.y, config, config.pretrain_epochs, offset=0
            )
        bounds = ParameterBounds(
            {n: t.clone() for n, t in nominal.items()}, {n: t.clone() for n, t in nominal.items()}, nominal
        )
        # the optimiser keeps its state across the switch from pretraining (one SGD run: its
        # momentum buffers carry over, exactly known since pretraining data is trusted)
        momentum_state = _interval_sgd_state(pre_state, list(nominal))
    else:
        bounds = copy.deepcopy(start)
        momentum_state = getattr(start, "optimizer_state", None)
    params = {n: IntervalTensor(bounds.lower[n], bounds.upper[n], requires_grad=True) for n in bounds.lower}
    opt = IntervalSGD(params, config.lr, config.momentum, config.weight_decay)
    if momentum_state:
        opt.load_state_dict(momentum_state)
    if start is not None:
        bounds.nominal_state = getattr(start, "nominal_state", {})  # type: ignore[attr-defined]
    else:
        bounds.nominal_state = pre_state  # type: ignore[attr-defined]
    epochs = range(bounds.epochs_done, config.epochs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(epochs, desc="certified training", unit="epoch")
        epochs = bar
    solver = _SolverSteps(model, dataset, config, executor) if config.step != "ibp" else None
    run = _Run(
        model,
        params,
        opt,
        dataset,
        config,
        n_classes,
        solver,
        bar,
        test,
        test_eps,
        track_nominal,
        on_epoch,
        val,
        val_eps,
    )
    try:
        for epoch in epochs:
            if not _train_epoch(run, epoch, bounds):
                break
    finally:
        if solver is not None:
            solver.close()
    return bounds


class _SolverSteps:
    """Runs the solver step (MIBP-Cert) of every batch and keeps the counters for progress."""

    def __init__(self, model, dataset: BoundedDataset, config: TrainConfig, executor=None):
        from boundflow.encode.training_step import supported_layers
        from solvers.executor import make_executor

        supported_layers(model)
        if dataset.k is not None or dataset.label_sets is not None:
            raise ValueError(
                f"step={config.step!r} supports data boxes with exact labels (linf, linf_subset, missing); "
                f"the dataset's threat is {dataset.threat!r} (per-batch budget k={dataset.k}, "
                f"label sets {'given' if dataset.label_sets is not None else 'none'}); use step='ibp'"
            )
        self.model, self.dataset, self.config = model, dataset, config
        self.own = executor is None
        self.executor = make_executor(config.executor, config.workers, config.address) if self.own else executor
        self.solves = 0
        self.seconds = 0.0
        self.status: dict[str, int] = {}
        self.shrinking: list[int] = []  # per step: parameters whose box got strictly narrower

    def step(self, before_lo, before_hi, params, idx, lr: float, on_done=None) -> None:
        """Intersect ``params`` (already holding the interval step's box) with the solver box
        of the step with learning rate ``lr``."""
        from boundflow.encode.training_step import solver_step

        c = self.config
        bt = self.dataset.batch(idx)
        lo, hi, st = solver_step(
            self.model,
            before_lo,
            before_hi,
            bt.lower,
            bt.upper,
            bt.y,
            c.loss,
            lr,
            c.weight_decay,
            c.step,
            self.executor,
            c.time_limit,
            on_done=on_done,
            decompose=c.decompose,
        )
        self.solves += st["solves"]
        self.seconds += st["seconds"]
        for k, v in st["status"].items():
            self.status[k] = self.status.get(k, 0) + v
        shrinking = 0
        for n, p in params.items():
            new_lo = torch.maximum(p.lower, lo[n])
            new_hi = torch.minimum(p.upper, hi[n])
            if bool((new_lo > new_hi).any()):  # cannot happen for sound boxes; keep the interval box
                raise RuntimeError(f"solver step: empty intersection for {n}; the solver bounds are inconsistent")
            shrinking += int(((new_hi - new_lo) < (before_hi[n] - before_lo[n])).sum())
            p._lower.copy_(new_lo)
            p._upper.copy_(new_hi)
        self.shrinking.append(shrinking)

    def close(self) -> None:
        if self.own:
            self.executor.close()


def _mean_width(params) -> float:
    tot = sum(float((p.upper - p.lower).sum()) for p in params.values())
    return tot / max(sum(p.lower.numel() for p in params.values()), 1)


@dataclass
class _Run:
    """What every epoch of one :func:`certified_training` call works with."""

    model: nn.Module
    params: dict
    opt: IntervalSGD
    dataset: BoundedDataset
    config: TrainConfig
    n_classes: int
    solver: _SolverSteps | None
    bar: object
    test: tuple | None
    test_eps: float
    track_nominal: bool
    on_epoch: Callable | None
    val: tuple | None
    val_eps: float


def _train_epoch(run: _Run, epoch: int, bounds: ParameterBounds) -> bool:
    """One certified epoch; returns False when training must stop (non-finite bounds, or a
    stopping rule)."""
    import time

    model, params, opt, dataset, config, n_classes = (
        run.model,
        run.params,
        run.opt,
        run.dataset,
        run.config,
        run.n_classes,
    )
    solver, bar, test, test_eps, track_nominal, on_epoch, val, val_eps = (
        run.solver,
        run.bar,
        run.test,
        run.test_eps,
        run.track_nominal,
        run.on_epoch,
        run.val,
        run.val_eps,
    )
    t0 = time.perf_counter()
    lr = lr_at(config, epoch + config.pretrain_epochs)
    opt.lr = lr
    last = ({n: p.lower.clone() for n, p in params.items()}, {n: p.upper.clone() for n, p in params.items()})
    last_buffers = opt.state_dict()
    step_widths = []
    for idx in batch_indices(len(dataset), config, epoch + config.pretrain_epochs):
        before = ({n: p.lower.clone() for n, p in params.items()}, {n: p.upper.clone() for n, p in params.items()})
        for p in params.values():
            p.grad = None
        _interval_grads(model, params, dataset, idx, config, n_classes)
        opt.step()
        if solver is not None:
            solver.step(before[0], before[1], params, idx, lr)
        step_widths.append(_mean_width(params))
        if bar is not None and solver is not None:
            bar.set_postfix(
                step=len(step_widths),
                solves=solver.solves,
                solver_s=f"{solver.seconds:.1f}",
                width=f"{step_widths[-1]:.3g}",
            )
    if track_nominal:
        bounds.nominal, bounds.nominal_state = _plain_sgd_epoch(
            model, bounds.nominal, dataset, config, epoch + config.pretrain_epochs, bounds.nominal_state
        )
    finite = all(torch.isfinite(p.lower).all() and torch.isfinite(p.upper).all() for p in params.values())
    if not finite:
        bounds.lower, bounds.upper = last
        opt.load_state_dict(last_buffers)
        bounds.diverged_at = epoch
        warnings.warn(
            f"parameter bounds became non-finite in epoch {epoch + 1}; stopping with the bounds after epoch "
            f"{epoch} (still sound)",
            TrainingDiverged,
            stacklevel=3,
        )
        return False
    bounds.lower = {n: p.lower.clone() for n, p in params.items()}
    bounds.upper = {n: p.upper.clone() for n, p in params.items()}
    bounds.epochs_done = epoch + 1
    metrics = {
        "epoch": epoch + 1,
        "mean_width": bounds.mean_width(),
        "seconds": time.perf_counter() - t0,
        "step_widths": step_widths,
    }
    if solver is not None:
        metrics.update(
            solves=solver.solves,
            solver_seconds=solver.seconds,
            solver_status=dict(solver.status),
            shrinking_params=list(solver.shrinking[-len(step_widths) :]),
        )
    if test is not None and dataset.regression:
        err = error_bounds(model, bounds, test[0], test[1], test_eps)
        metrics.update(certified_mse_lower=err.mse_lower, certified_mse_upper=err.mse_upper)
        if track_nominal:
            metrics["nominal_mse"] = _mse(model, bounds.nominal, test[0], test[1])
    elif test is not None:
        cert = certify(model, bounds, test[0], test[1], test_eps)
        metrics.update(certified_accuracy=cert.accuracy, certified_fraction=cert.certified)
        if track_nominal:
            metrics["nominal_accuracy"] = _accuracy(model, bounds.nominal, test[0], test[1])
    bounds.history.append(metrics)
    bounds.optimizer_state = opt.state_dict()  # type: ignore[attr-defined]
    go_on = True
    if val is not None and dataset.regression:  # the higher the better: the certified MSE, negated
        score = -error_bounds(model, bounds, val[0], val[1], val_eps).mse_upper
        metrics["val_certified_mse_upper"] = -score
        metrics["val_score"] = score
        go_on = _select(bounds, config, epoch + 1, score)
    elif val is not None:
        score = certify(model, bounds, val[0], val[1], val_eps).accuracy
        metrics["val_certified_accuracy"] = score
        go_on = _select(bounds, config, epoch + 1, score)
    if bar is not None:
        post = {"width": f"{metrics['mean_width']:.3g}"}
        if "certified_accuracy" in metrics:
            post["cert_acc"] = f"{metrics['certified_accuracy']:.3f}"
        if "certified_mse_upper" in metrics:
            post["mse_max"] = f"{metrics['certified_mse_upper']:.4g}"
        bar.set_postfix(post)
    if on_epoch is not None:
        on_epoch(bounds, metrics)
    return go_on


def _select(bounds: ParameterBounds, config: TrainConfig, epoch: int, score: float) -> bool:
    """Keep the box of ``epoch`` if it is the best so far; False when a stopping rule ends training."""
    best = bounds.best
    if config.keep_best and (best is None or score > best["score"]):
        bounds.best = best = {
            "epoch": epoch,
            "score": score,
            "lower": {n: t.clone() for n, t in bounds.lower.items()},
            "upper": {n: t.clone() for n, t in bounds.upper.items()},
            "nominal": {n: t.clone() for n, t in bounds.nominal.items()},
        }
    # this epoch's metrics are already the history's last entry
    # (the higher the better: certified accuracy, or the certified MSE negated for regression)
    scores = [h["val_score"] if "val_score" in h else h["val_certified_accuracy"] for h in bounds.history
              if "val_score" in h or "val_certified_accuracy" in h]  # fmt: skip
    top = max(scores)
    stop = config.stop_drop is not None and score < top - config.stop_drop
    if config.patience is not None:
        since = len(scores) - 1 - scores.index(top)  # epochs since the (first) best
        stop = stop or since >= config.patience
    if stop:
        bounds.stopped_at = epoch
    return not stop


def _accuracy(model, params, x, y) -> float:
    with torch.no_grad():
        out = functional_call(model, params, (x.to(torch.float64),))
    pred = (out.reshape(-1) > 0).long() if out.dim() == 1 or out.shape[-1] == 1 else out.argmax(1)
    return float((pred == y).double().mean())


def _mse(model, params, x, y) -> float:
    with torch.no_grad():
        out = functional_call(model, params, (x.to(torch.float64),))
    return float(((out - torch.as_tensor(y, dtype=out.dtype).reshape(out.shape)) ** 2).mean())


def _plain_sgd_epoch(model, params, dataset, config, epoch, state):
    """One epoch of ordinary ``torch.optim.SGD`` on the nominal data (the ``nominal`` run)."""
    p = {n: t.clone().requires_grad_(True) for n, t in params.items()}
    opt = torch.optim.SGD(
        list(p.values()), lr=lr_at(config, epoch), momentum=config.momentum, weight_decay=config.weight_decay
    )
    if state:
        opt.load_state_dict(state)  # (its momentum buffers; the state's lr is the previous epoch's)
        for group in opt.param_groups:
            group["lr"] = lr_at(config, epoch)
    for idx in batch_indices(len(dataset), config, epoch):
        opt.zero_grad()
        bt = dataset.batch(idx)
        plain_gradients(model, p, bt.x, bt.y, config.loss, config.clip)
        opt.step()
    return {n: t.detach().clone() for n, t in p.items()}, opt.state_dict()


def plain_gradients(model, params: dict, x, y, loss: str, clip: float | None = None) -> None:
    """Set ``params[*].grad`` to the batch gradient of ordinary training: the gradient of the
    batch-mean ``loss``, or with ``clip`` the mean of the per-sample gradients each clamped to
    ``[-clip, clip]`` (what :class:`TrainConfig` ``clip`` certifies)."""
    if clip is None:
        plain_loss(functional_call(model, params, (x,)), y, loss).backward()
        return
    from torch.func import grad, vmap

    def one(p, xi, yi):
        return plain_loss(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0), loss)

    per = vmap(grad(one), in_dims=(None, 0, 0))({n: t.detach() for n, t in params.items()}, x, y)
    for n, t in params.items():
        t.grad = per[n].clamp(-clip, clip).mean(0)


def _plain_epochs(model, params, x, y, config, epochs, offset):
    state: dict = {}
    from boundflow.train.bounded import BoundedDataset as _BD

    data = _BD(x, None, None, y, eps=0.0)
    for e in range(epochs):
        params, state = _plain_sgd_epoch(model, params, data, config, offset + e, state)
    return params, state


def _interval_sgd_state(sgd_state: dict, names: list[str]) -> dict | None:
    """``torch.optim.SGD``'s state dict (parameters in ``names`` order) as
    :class:`IntervalSGD` state: each momentum buffer as the exact interval ``[b, b]``."""
    buffers = {}
    for i, st in (sgd_state or {}).get("state", {}).items():
        buf = st.get("momentum_buffer")
        if buf is not None:
            buffers[names[int(i)]] = (buf.detach().clone(), buf.detach().clone())
    return {"buffers": buffers} if buffers else None


def config_dict(config: TrainConfig) -> dict:
    return asdict(config)
