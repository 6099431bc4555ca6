"""``boundflow train``: certified training from the command line."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from torch import nn

__all__ = ["add_train_parser", "run_train", "mlp"]


def mlp(d_in: int, d_out: int, hidden: int, layers: int, seed: int) -> nn.Module:
    """``layers`` linear layers of width ``hidden`` with ReLU in between (float64)."""
    from boundflow.models import mlp as build

    return build([d_in] + [hidden] * (layers - 1) + [d_out], seed=seed)


def add_train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="certified training on a bounded dataset")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", default="moons", help="moons, digits, digits-AvB, breast-cancer, iris")
    src.add_argument("--data", help="a .npz (x, y[, x_test, y_test]) or .csv (label last) file")
    p.add_argument("--threat", default="linf", choices=["linf", "poison", "label-flip"])
    p.add_argument("--epsilon", type=float, default=0.01, help="l-inf radius of the feature perturbation")
    p.add_argument("--k", type=int, default=1, help="per-batch budget for poison / label-flip")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--hidden", type=int, default=20)
    p.add_argument("--layers", type=int, default=2, help="number of linear layers")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument(
        "--loss",
        default=None,
        choices=["bce", "cross_entropy", "hinge", "mse"],
        help="default: bce for two classes, cross_entropy otherwise",
    )
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--pretrain-epochs", type=int, default=0)
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=1000, help="Two-Moons size")
    p.add_argument("--test-eps", type=float, default=0.0, help="test-time l-inf radius for certification")
    p.add_argument("--out", default="runs/train", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--method",
        default="interval",
        choices=["interval", "lp", "milp", "mibp"],
        help="step bounds: interval arithmetic (FullCert) or a solver program per step (MIBP-Cert)",
    )
    p.add_argument("--workers", type=int, default=1, help="parallel solver processes (solver methods)")
    p.add_argument("--executor", default="process", choices=["serial", "process", "ray"])
    p.add_argument("--address", help="Ray cluster address for --executor ray (default: start a local Ray)")
    p.add_argument("--time-limit", type=float, help="seconds per solve (a stopped solve keeps its proven bound)")
    p.add_argument(
        "--joint", action="store_true", help="one joint program per batch instead of one per sample (slower)"
    )
    return p


def run_train(args) -> int:
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
        save_bounds,
    )
    from boundflow.train.plots import plot_history, plot_regions

    data = (
        load_file(args.data, seed=args.seed)
        if args.data
        else load_dataset(args.dataset, seed=args.seed, n_samples=args.samples)
    )
    c = data.n_classes
    loss = args.loss or ("bce" if c == 2 else "cross_entropy")
    if loss in ("bce", "hinge") and c != 2:
        raise SystemExit(f"error: loss {loss!r} needs two classes, {data.name} has {c}")
    d_out = 1 if loss in ("bce", "hinge") else c
    model = mlp(data.n_features, d_out, args.hidden, args.layers, args.seed)
    if args.threat == "linf":
        bd = linf(data.x_train, data.y_train, args.epsilon)
    elif args.threat == "poison":
        bd = poison(data.x_train, data.y_train, args.k, args.epsilon)
    else:
        bd = label_flip(data.x_train, data.y_train, args.k, n_classes=c)
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
        method=args.method,
        workers=args.workers,
        executor=args.executor,
        address=args.address,
        time_limit=args.time_limit,
        decompose=not args.joint,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    start = None
    if args.resume and ckpt.exists():
        start, saved_cfg, _ = load_bounds(ckpt)
        free = {"epochs", "workers", "executor", "address"}  # may change between runs
        if {k: v for k, v in asdict(saved_cfg).items() if k not in free} != {
            k: v for k, v in asdict(config).items() if k not in free
        }:
            raise SystemExit(f"error: {ckpt} was written with a different configuration: {asdict(saved_cfg)}")
        print(f"resuming from epoch {start.epochs_done}")
    extra = {"dataset": data.name, "threat": bd.threat, "model": str(model), "test_eps": args.test_eps}

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
    )
    save_bounds(out / "bounds.pt", bounds, config, extra)
    cert = certify(model, bounds, data.x_test, data.y_test, args.test_eps)
    metrics = {
        "dataset": data.name,
        "threat": bd.threat,
        "config": asdict(config),
        "epochs_done": bounds.epochs_done,
        "diverged_at": bounds.diverged_at,
        "final": {
            "certified_accuracy": cert.accuracy,
            "certified_fraction": cert.certified,
            "mean_width": bounds.mean_width(),
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
            bounds,
            data.x_test,
            data.y_test,
            out / "regions.png",
            args.test_eps,
            f"certified regions after {bounds.epochs_done} epochs (grey: abstain)",
        )
    best = max(bounds.history, key=lambda h: h.get("certified_accuracy") or 0) if bounds.history else None
    print(
        f"{data.name} {bd.threat}: {bounds.epochs_done} epochs, certified accuracy {cert.accuracy:.3f} "
        f"(certified {cert.certified:.3f}), mean bound width {bounds.mean_width():.3g}"
        + (f"; best epoch {best['epoch']}: {best['certified_accuracy']:.3f}" if best else "")
    )
    print(f"wrote {out}/metrics.json, bounds.pt, training.png" + (", regions.png" if data.n_features == 2 else ""))
    return 0
