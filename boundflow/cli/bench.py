"""``boundflow bench tightness`` and ``boundflow bench training``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from boundflow.cli import options
from boundflow.domains.registry import method_names

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: relaxation tightness, training-time tightness")
    bsub = p.add_subparsers(dest="bench", required=True)
    t = bsub.add_parser("tightness", help="bound the same networks and properties with every method")
    t.add_argument("--quick", action="store_true", help="three small networks, 3 points, 2 eps (about a minute)")
    t.add_argument("--methods", default="ibp,crown,alpha-crown,lp,milp", help="comma-separated methods")
    options.eps(t, None, "comma-separated l-inf radii (default: 0.003,0.01,0.03,0.1; 0.01,0.03 with --quick)")
    options.count(t, "inputs", None, "input points per network (default: 16; 3 with --quick)", old="--points")
    options.time_limit(t, None, "seconds per solver bound (default: 5; 0.5 with --quick)")
    t.add_argument("--onnx", action="append", default=[], help="also bound this ONNX network (repeatable)")
    t.add_argument("--onnx-data", default=None, help=".npz with x (and y) for the ONNX networks' points")
    t.add_argument("--factory", action="append", default=[], help="module:function returning a network case")
    t.add_argument("--no-builtin", action="store_true", help="only the --onnx / --factory networks")
    options.out(t, "runs/tightness", "folder for tightness.json, .md, .png")
    options.no_progress(t)
    tr = bsub.add_parser("training", help="parameter-bound width and certified accuracy per epoch, per method")
    tr.add_argument("--quick", action="store_true", help="1 seed, 3 epochs, interval and lp, eps 0.01")
    tr.add_argument("--dataset", default="moons", help="moons, iris-2 (versicolor/virginica), breast-cancer")
    tr.add_argument("--methods", default=None, help="ibp, lp, milp, mibp (default: ibp,lp,milp; ibp,lp with --quick)")
    options.eps(tr, None, "comma-separated l-inf radii (default: 1e-4,1e-3,1e-2; 1e-2 with --quick)")
    tr.add_argument("--seeds", type=int, default=None, help="default: 10 (1 with --quick)")
    tr.add_argument("--solver-seeds", type=int, default=None, help="seeds for lp/milp/mibp (default: --seeds)")
    tr.add_argument("--solver-eps", default=None, help="radii for lp/milp/mibp (default: --eps)")
    tr.add_argument("--epochs", type=int, default=None, help="at most this many (default: 10; 3 with --quick)")
    tr.add_argument("--patience", type=int, default=2, help="stop after this many epochs without improvement")
    tr.add_argument("--n-train", type=int, default=100, help="Two-Moons training points (default: 100)")
    tr.add_argument("--n-val", type=int, default=200, help="Two-Moons validation points (default: 200)")
    tr.add_argument("--n-test", type=int, default=200, help="Two-Moons test points (default: 200)")
    tr.add_argument("--batch-size", type=int, default=100, help="default: 100")
    tr.add_argument("--hidden", type=int, default=8, help="hidden ReLUs (default: 8)")
    tr.add_argument("--lr", type=float, default=2.0, help="default: 2.0")
    tr.add_argument("--loss", default="bce", help="bce, hinge or mse (default: bce)")
    tr.add_argument("--group", type=int, default=10, help="samples per solver program (default: 10)")
    tr.add_argument("--workers", type=int, default=2, help="solver processes (default: 2)")
    tr.add_argument(
        "--certify-method",
        default="ibp",
        choices=["ibp", "crown", "alpha-crown"],
        help="domain certifying the kept box's test predictions (default: ibp; the epochs are chosen with ibp)",
    )
    options.time_limit(tr, 5.0, "seconds per solve")
    options.out(tr, "runs/training-tightness", "folder for <name>.json, .md, .png")
    tr.add_argument("--name", default="training", help="file stem of the outputs (<name>.json, .md, .png)")
    tr.add_argument("--cmd", default="boundflow bench training", help=argparse.SUPPRESS)
    options.no_progress(tr)


def run(args) -> int:
    if args.bench == "tightness":
        return _tightness(args)
    from boundflow.bench.training import SOLVER_METHODS, defaults, run_cli

    defaults(args)
    methods = method_names(args.methods, ("ibp",) + SOLVER_METHODS, "--methods")
    epsilons = options.floats(args.eps, "--eps")
    solver_eps = options.floats(args.solver_eps, "--solver-eps") if args.solver_eps else None
    return run_cli(args, methods, epsilons, solver_eps)


def _tightness(args) -> int:
    from boundflow.atomic import atomic_write_text
    from boundflow.bench import tightness as T
    from boundflow.bench.networks import builtin_cases, factory_case, onnx_case

    eps = options.floats(args.eps or ("0.01,0.03" if args.quick else "0.003,0.01,0.03,0.1"), "--eps")
    methods = method_names(args.methods, T.METHODS, "--methods")
    points = args.n_inputs or (3 if args.quick else 16)
    time_limit = args.time_limit if args.time_limit is not None else (0.5 if args.quick else 5.0)
    cases = [] if args.no_builtin else builtin_cases(args.quick, points)
    for path in args.onnx:
        try:
            cases.append(onnx_case(path, points, args.onnx_data))
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: --onnx {path}: {e}") from None
    for spec in args.factory:
        cases.append(factory_case(spec))
    if not cases:
        raise SystemExit("error: no networks (--no-builtin without --onnx or --factory)")
    settings = {"eps": eps, "methods": methods, "points": points, "time_limit": time_limit, "quick": args.quick}
    from boundflow.outputs import claim

    out = claim(args.out, ["tightness.json", "tightness.md", "tightness.png"], force=getattr(args, "force", False))
    res = T.run(cases, eps, methods, time_limit, progress=not args.no_progress, settings=settings)
    bad = T.check_consistency(res)
    command = "boundflow " + shlex.join(getattr(args, "argv", []) or ["bench", "tightness"])
    payload = res.to_json() | {"consistency_violations": bad, "command": command}
    atomic_write_text(out / "tightness.json", json.dumps(payload, indent=1))
    md = T.markdown(res, command) + "\n![width vs eps per method; time vs tightness](tightness.png)\n"
    atomic_write_text(out / "tightness.md", md)
    T.plot(res, out / "tightness.png")
    print("\n".join(md.splitlines()[8 : 10 + len(methods)]))
    print(f"wrote {out}/tightness.json, tightness.md, tightness.png")
    if bad:
        print("CONSISTENCY VIOLATIONS:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    return 0
