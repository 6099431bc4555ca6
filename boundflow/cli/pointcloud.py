"""``boundflow certify-pointcloud``: certify a PointNet against a 3-D transformation range."""

from __future__ import annotations

from boundflow.cli import options

__all__ = ["add_parser", "run"]


def add_parser(sub):
    p = sub.add_parser("certify-pointcloud", help="certify point-cloud classifiers against 3-D transformations")
    p.add_argument("--model", help="a PointNet state dict saved by this command (default: train one on the shapes)")
    p.add_argument("--data", help=".npz with points (M, N, 3) and labels (M,) (default: embedded shapes)")
    p.add_argument("--transform", default="rotation-z", help="e.g. rotation-z, twisting-z, tapering-z+rotation-x")
    p.add_argument("--theta", default="3deg", help="range: 3deg, 0.05rad, -2:5deg, 0.1 (unit-free coefficients)")
    p.add_argument("--splits", type=int, default=10, help="sub-ranges per parameter")
    p.add_argument(
        "--refine",
        type=int,
        default=0,
        help="halve a sub-range that does not certify, up to this many times along any path (adaptive splits)",
    )
    p.add_argument(
        "--relaxation",
        default="taylor",
        choices=["taylor", "interval"],
        help="of the transformed points: a linear form in theta with a box remainder, or a box",
    )
    p.add_argument("--method", default="forward", help="linear-domain method for the network (forward, crown)")
    p.add_argument("--pool", default="max", choices=["max", "cascade"], help="how the global max pool is written")
    p.add_argument(
        "--maxpool",
        choices=["tight", "deeppoly"],
        help="max-pool relaxation: tight needs --method forward or crown (default: tight with forward, else deeppoly)",
    )
    options.count(p, "clouds", 24, "clouds to certify", old="--objects")
    options.count(p, "points", 64, "points per cloud (of the embedded shapes and the trained PointNet)", old="--points")
    options.seed(p)
    options.out(p, "runs/pointcloud", "folder for results.json, results.md, cloud.png (and model.pt)")
    options.no_progress(p)
    return p


def run(args) -> int:
    """Parse ``args`` into a :class:`~boundflow.pointcloud.CertifyJob`, run it, print its report."""
    from boundflow.pointcloud.job import CertifyJob, certify_job

    job = CertifyJob(**{name: getattr(args, name) for name in CertifyJob.__dataclass_fields__})
    res = certify_job(
        job,
        args.out,
        force=getattr(args, "force", False),
        progress=not args.no_progress,
        argv=getattr(args, "argv", None),
        log=print,
    )
    print("\n".join(res.lines))
    return 0
