"""``boundflow train``: certified training from the command line."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from boundflow.cli import options

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="certified training on a bounded dataset")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", default="moons", help="moons, digits, digits-AvB, breast-cancer, iris")
    src.add_argument(
        "--data",
        help="a .npz (x, y[, x_test, y_test]) or .csv (label last) file, or a folder of x.npy, y.npy, x_test.npy, "
        "y_test.npy whose x is memory-mapped and streamed",
    )
    p.add_argument(
        "--regression",
        action="store_true",
        help="--data holds float regression targets (loss mse; certified error bounds instead of accuracy)",
    )
    p.add_argument(
        "--threat",
        default="linf",
        choices=["linf", "poison", "label-flip", "removal", "substitution"],
        help="threat model: every feature within --eps; k samples poisoned; k labels flipped; k samples removed "
        "(certified unlearning); k samples replaced by anything (needs --clip)",
    )
    options.eps(p, None, "l-inf radius of the feature perturbation (linf, poison; default: 0.01)", type=float)
    p.add_argument("--k", type=int, default=1, help="per-batch budget for poison, label-flip, removal, substitution")
    p.add_argument(
        "--clip",
        type=float,
        default=None,
        help="clamp every per-sample gradient to [-clip, clip] before the batch mean (as DP-SGD without noise)",
    )
    p.add_argument("--epochs", type=int, default=10, help="training epochs (at most, with --patience/--stop-drop)")
    p.add_argument("--hidden", type=int, default=20, help="width of each hidden layer")
    p.add_argument("--layers", type=int, default=2, help="number of linear layers")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate of the first epoch (default: 0.1)")
    p.add_argument("--lr-decay", type=float, default=1.0, help="epoch e uses lr * lr_decay**e (default: 1, none)")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument(
        "--keep-best",
        dest="keep_best",
        action="store_true",
        default=True,
        help="save the box of the epoch with the best validation certified accuracy (default)",
    )
    keep.add_argument("--keep-last", dest="keep_best", action="store_false", help="save the last epoch's box")
    p.add_argument(
        "--stop-drop",
        type=float,
        default=None,
        help="stop once validation certified accuracy falls this far below its best (FullCert: 0.05)",
    )
    p.add_argument("--patience", type=int, default=None, help="stop after this many epochs without improvement")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of the training data held out for validation (default: 0.2; 0 with --keep-last)",
    )
    p.add_argument("--batch-size", type=int, default=100, help="samples per step (an incomplete last batch is dropped)")
    p.add_argument(
        "--loss",
        default=None,
        choices=["bce", "cross_entropy", "hinge", "mse"],
        help="default: bce for two classes, cross_entropy otherwise",
    )
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (ibp only)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 penalty added to the gradient")
    p.add_argument("--pretrain-epochs", type=int, default=0, help="ordinary epochs on the nominal (trusted) data first")
    p.add_argument("--shuffle", action="store_true", help="a seeded permutation of the samples each epoch")
    options.seed(p)
    options.count(p, "samples", 1000, "Two-Moons points generated (a quarter held out for testing)", old="--samples")
    p.add_argument("--test-eps", type=float, default=0.0, help="test-time l-inf radius for certification")
    options.out(p, "runs/train", "folder for metrics.json, bounds.pt, checkpoint.pt and the plots")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    options.no_progress(p)
    from boundflow.domains.base import canonical_method
    from boundflow.train.trainer import METHODS

    p.add_argument(
        "--step",
        "--method",
        dest="method",
        default="ibp",
        type=canonical_method,
        choices=METHODS,
        help="step bounds: interval arithmetic, ibp (FullCert; 'interval' is accepted), or a solver program "
        "per step: lp, milp, mibp (MIBP-Cert); --method is its old name",
    )
    options.parallel(p, "the solver programs (solver methods)", ("serial", "process", "ray"))
    options.time_limit(p, None, "seconds per solve (a stopped solve keeps its proven bound)")
    grp = p.add_mutually_exclusive_group()
    grp.add_argument(
        "--group",
        type=int,
        default=1,
        help="samples per solver program sharing one copy of the parameters (default: 1, per-sample programs)",
    )
    grp.add_argument(
        "--joint", action="store_true", help="one joint program per batch (MIBP-Cert's; the slowest, the tightest)"
    )
    return p


def run(args) -> int:
    from boundflow.atomic import atomic_write_text
    from boundflow.train import (
        TrainConfig,
        certified_training,
        certify,
        label_flip,
        linf,
        load_bounds,
        load_dataset,
        load_file,
        poison,
        removal,
        save_bounds,
        substitution,
    )
    from boundflow.train.plots import plot_history, plot_regions

    why = _check_args(args)
    if why:
        raise SystemExit(f"error: {why}")
    if args.eps is None:
        args.eps = 0.0 if args.threat in ("label-flip", "removal", "substitution") else 0.01
    data = (
        load_file(args.data, seed=args.seed, regression=args.regression)
        if args.data
        else load_dataset(args.dataset, seed=args.seed, n_samples=args.n_samples)
    )
    c = data.n_classes
    loss = args.loss or ("mse" if args.regression else "bce" if c == 2 else "cross_entropy")
    if args.regression and loss != "mse":
        raise SystemExit(f"error: --regression trains with --loss mse, not {loss!r}")
    if loss in ("bce", "hinge") and c != 2:
        raise SystemExit(f"error: loss {loss!r} needs two classes, {data.name} has {c}")
    x_train, y_train, val = _split_val(data.x_train, data.y_train, args.val_fraction, args.seed)
    if args.batch_size > len(x_train):
        raise SystemExit(
            f"error: --batch-size {args.batch_size} is larger than the {len(x_train)} training samples "
            f"(after holding out {len(data.x_train) - len(x_train)} for validation): no batch would run"
        )
    if args.threat != "linf" and args.k > args.batch_size:
        raise SystemExit(f"error: --k {args.k} is larger than --batch-size {args.batch_size}")
    d_out = data.n_outputs if args.regression else 1 if loss in ("bce", "hinge") else c
    from boundflow.models import hidden_mlp

    model = hidden_mlp(data.n_features, d_out, args.hidden, args.layers, args.seed)
    if args.threat == "linf":
        bd = linf(x_train, y_train, args.eps, regression=args.regression)
    elif args.threat == "poison":
        bd = poison(x_train, y_train, args.k, args.eps, regression=args.regression)
    elif args.threat == "removal":
        bd = removal(x_train, y_train, args.k, regression=args.regression)
    elif args.threat == "substitution":
        bd = substitution(x_train, y_train, args.k, regression=args.regression)
    else:
        bd = label_flip(x_train, y_train, args.k, n_classes=c)
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        loss=loss,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        seed=args.seed,
        shuffle=args.shuffle,
        pretrain_epochs=args.pretrain_epochs,
        step=args.method,
        workers=args.workers,
        executor=args.executor,
        address=args.address,
        time_limit=args.time_limit,
        decompose=False if args.joint else (True if args.group == 1 else args.group),
        lr_decay=args.lr_decay,
        keep_best=args.keep_best,
        stop_drop=args.stop_drop,
        patience=args.patience,
        clip=args.clip,
    )
    from boundflow.outputs import claim, record

    results = ["metrics.json", "bounds.pt", "checkpoint.pt", "training.png", "regions.png"]
    resuming = args.resume and (Path(args.out) / "checkpoint.pt").exists()
    out = claim(args.out, results, force=args.force, resume=resuming)
    ckpt = out / "checkpoint.pt"
    start = None
    extra = {
        "dataset": data.name,
        "threat": bd.threat,
        "threat_model": {
            "threat": args.threat,
            "epsilon": args.eps,
            "k": None if args.threat == "linf" else args.k,
            "clip": args.clip,
        },
        "data_sha256": _fingerprint(bd, val),
        "model": str(model),
        "test_eps": args.test_eps,
    }
    if args.resume and ckpt.exists():
        start, saved_cfg, saved_extra = load_bounds(ckpt)
        free = {"epochs", "workers", "executor", "address"}  # may change between runs
        old_cfg = {k: v for k, v in asdict(saved_cfg).items() if k not in free}
        new_cfg = {k: v for k, v in asdict(config).items() if k not in free}
        if old_cfg != new_cfg:
            diff = ", ".join(
                f"{k} {old_cfg.get(k)!r} -> {new_cfg.get(k)!r}" for k in new_cfg if old_cfg.get(k) != new_cfg[k]
            )
            raise SystemExit(f"error: {ckpt} was written with a different configuration ({diff}); use another --out")
        checked = (
            ("threat_model", "threat model"),
            ("data_sha256", "dataset"),
            ("model", "model"),
            ("test_eps", "test radius"),
        )
        for key, what in checked:
            if saved_extra.get(key) != extra[key]:
                raise SystemExit(
                    f"error: {ckpt} was written for a different {what} "
                    f"({saved_extra.get(key)!r}, now {extra[key]!r}); use another --out"
                )
        print(f"resuming from epoch {start.epochs_done}")
    record(out, getattr(args, "argv", None))

    def on_epoch(bounds, metrics):
        save_bounds(ckpt, bounds, config, extra)

    bounds = certified_training(
        model,
        bd,
        config,
        test=(data.x_test, data.y_test),
        test_eps=args.test_eps,
        progress=not args.no_progress,
        start=start,
        on_epoch=on_epoch,
        val=val,
        val_eps=args.test_eps,
    )
    kept = bounds.kept()
    save_bounds(out / "bounds.pt", kept, config, {**extra, "kept_epoch": kept.epochs_done})
    if args.regression:
        return _finish_regression(args, data, bd, config, bounds, kept, extra, out, model)
    cert = certify(model, kept, data.x_test, data.y_test, args.test_eps)
    metrics = {
        **_run_record(data, bd, extra, config, bounds),
        "kept": {
            "epoch": kept.epochs_done,
            "rule": "best validation certified accuracy" if args.keep_best else "last epoch",
            "val_certified_accuracy": (bounds.best or {}).get("score"),
        },
        "final": {
            "certified_accuracy": cert.accuracy,
            "certified_fraction": cert.certified,
            "mean_width": kept.mean_width(),
        },
        "history": bounds.history,
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    title = f"{data.name}, {bd.threat}, {args.layers} layers x {args.hidden}"
    if bounds.history:
        plot_history(bounds.history, out / "training.png", title)
    if data.n_features == 2:
        plot_regions(
            model,
            kept,
            data.x_test,
            data.y_test,
            out / "regions.png",
            args.test_eps,
            f"certified regions of the kept box, epoch {kept.epochs_done} (grey: abstain)",
        )
    stop = f", stopped early after epoch {bounds.stopped_at}" if bounds.stopped_at else ""
    print(
        f"{data.name} {bd.threat}: {bounds.epochs_done} epochs{stop}; kept the box of epoch {kept.epochs_done} "
        f"({metrics['kept']['rule']}): test certified accuracy {cert.accuracy:.3f} "
        f"(certified {cert.certified:.3f}), mean bound width {kept.mean_width():.3g}"
    )
    print(f"wrote {out}/metrics.json, bounds.pt, training.png" + (", regions.png" if data.n_features == 2 else ""))
    return 0


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


def _finish_regression(args, data, bd, config, bounds, kept, extra, out, model) -> int:
    """Regression's metrics, plot and summary line: certified error bounds on the test data."""
    from boundflow.atomic import atomic_write_text
    from boundflow.train import error_bounds
    from boundflow.train.plots import plot_history

    err = error_bounds(model, kept, data.x_test, data.y_test, args.test_eps)
    metrics = {
        **_run_record(data, bd, extra, config, bounds),
        "kept": {
            "epoch": kept.epochs_done,
            "rule": "best validation certified MSE" if args.keep_best else "last epoch",
        },
        "final": {
            "certified_mse_lower": err.mse_lower,
            "certified_mse_upper": err.mse_upper,
            "certified_mae_upper": err.mae_upper,
            "mean_width": kept.mean_width(),
        },
        "history": bounds.history,
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    if bounds.history:
        plot_history(bounds.history, out / "training.png", f"{data.name}, {bd.threat}, regression")
    print(
        f"{data.name} {bd.threat}: {bounds.epochs_done} epochs; kept the box of epoch {kept.epochs_done}: "
        f"test MSE certified in [{err.mse_lower:.4g}, {err.mse_upper:.4g}], mean bound width {kept.mean_width():.3g}"
    )
    print(f"wrote {out}/metrics.json, bounds.pt, training.png")
    return 0


def _check_args(args) -> str | None:
    """The first argument that cannot work, as a one-line message (checked before any work)."""
    checks = [
        (args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}"),
        (args.hidden >= 1, f"--hidden must be >= 1, got {args.hidden}"),
        (args.layers >= 1, f"--layers must be >= 1, got {args.layers}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.lr > 0, f"--lr must be > 0, got {args.lr}"),
        (0 < args.lr_decay <= 1, f"--lr-decay must be in (0, 1], got {args.lr_decay}"),
        (args.eps is None or args.eps >= 0, f"--eps must be >= 0, got {args.eps}"),
        (args.k >= 0, f"--k must be >= 0, got {args.k}"),
        (args.group >= 1, f"--group must be >= 1 samples per program, got {args.group}"),
        (args.n_samples >= 2, f"--n-samples must be >= 2, got {args.n_samples}"),
        (not args.regression or args.data, "--regression needs --data (the embedded datasets are classification)"),
        (
            not args.regression or args.threat != "label-flip",
            "--threat label-flip flips class labels; regression targets take linf, poison, removal or substitution",
        ),
        (0 <= args.val_fraction < 1, f"--val-fraction must be in [0, 1), got {args.val_fraction}"),
        (args.test_eps >= 0, f"--test-eps must be >= 0, got {args.test_eps}"),
        (args.patience is None or args.patience >= 1, f"--patience must be >= 1, got {args.patience}"),
        (args.stop_drop is None or args.stop_drop >= 0, f"--stop-drop must be >= 0, got {args.stop_drop}"),
        (
            not (args.threat == "label-flip" and args.eps is not None),
            "--eps has no effect with --threat label-flip (labels flip, features stay); drop it",
        ),
        (
            not (args.threat in ("removal", "substitution") and args.eps is not None),
            f"--eps has no effect with --threat {args.threat} (samples are removed or replaced whole); drop it",
        ),
        (args.clip is None or args.clip > 0, f"--clip must be > 0, got {args.clip}"),
        (
            args.threat != "substitution" or args.clip is not None,
            "--threat substitution needs --clip (a replaced sample's gradient is otherwise unbounded)",
        ),
        (
            args.clip is None or args.method == "ibp",
            f"--clip is modelled by --method ibp only, not {args.method}",
        ),
        (
            args.threat != "removal" or args.k < args.batch_size,
            f"--threat removal: --k {args.k} must be below --batch-size {args.batch_size}",
        ),
        (
            args.val_fraction > 0 or not (args.keep_best or args.stop_drop is not None or args.patience is not None),
            "--keep-best, --stop-drop and --patience need validation data: --val-fraction > 0 (or --keep-last)",
        ),
    ]
    return next((msg for ok, msg in checks if not ok), None)


def _split_val(x, y, fraction: float, seed: int):
    """``(x_train, y_train, (x_val, y_val) or None)``: a seeded share of the training data (of
    streamed data: its last rows)."""
    import numpy as np
    import torch

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
    import hashlib

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
