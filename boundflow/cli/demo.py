"""``boundflow demo``: options and the checks made before it runs."""

from __future__ import annotations

from boundflow.cli import options

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    demo = sub.add_parser("demo", help="bound a small model's outputs and gradients on interval data")
    options.eps(demo, 0.05, "input perturbation (l-infinity radius)", type=float)
    demo.add_argument("--param-radius", type=float, default=0.01, help="parameter interval radius")
    options.seed(demo)
    options.out(demo, "results", "folder for the demo's plots")


def run(args) -> int:
    from boundflow.demo import OUTPUTS, run_demo
    from boundflow.outputs import claim, record

    if not args.eps > 0:
        raise SystemExit(f"error: --eps must be > 0 (an l-infinity radius), got {args.eps}")
    if not args.param_radius >= 0:
        raise SystemExit(f"error: --param-radius must be >= 0, got {args.param_radius}")
    record(claim(args.out, OUTPUTS, force=args.force), args.argv)
    return run_demo(eps=args.eps, param_radius=args.param_radius, seed=args.seed, out_dir=args.out)
