"""``boundflow train``: certified training from the command line."""

from __future__ import annotations

import argparse

from boundflow.cli import options
from boundflow.train.job import THREATS

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
        choices=THREATS,
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
    from boundflow.domains.registry import canonical_method
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
    """Parse ``args`` into a :class:`~boundflow.train.TrainJob`, run it, print its report."""
    from boundflow.train.job import TrainJob, run_job

    fields = set(TrainJob.__dataclass_fields__) - {"step"}
    job = TrainJob(step=args.method, **{name: getattr(args, name) for name in fields})
    res = run_job(
        job,
        args.out,
        resume=args.resume,
        force=getattr(args, "force", False),
        progress=not args.no_progress,
        argv=getattr(args, "argv", None),
        log=print,
    )
    print("\n".join(res.lines))
    return 0
