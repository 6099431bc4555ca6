"""Point-cloud certification: interval vs Taylor relaxations of the transformation, and three
treatments of the global max pool: one pool with DeepPoly's relaxation, one pool with the tight
(pivot-difference) relaxation, and the pool written as a cascade of pairwise maxima.

    python benchmarks/pointcloud.py [--objects 24] [--out docs/benchmarks] [--refine 0,3]
        [--transforms rotation-z] [--relaxations interval,taylor]

A PointNet (64 points, no T-nets) trained on the embedded shapes with rotation augmentation;
certified percentage of the test clouds and seconds per object (forward-mode linear bounds) for
rotation-z at +-1, 3, 10, 60 degrees (with splits), twisting, tapering and shearing; with
``--refine`` also adaptive splitting (failing sub-ranges halved up to that many times).
Writes pointcloud.json, pointcloud.md, pointcloud.png (``--name`` changes the stem).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json, write_text  # noqa: E402

import boundflow.pointcloud as pc  # noqa: E402

# (transform, theta, unit, splits)
SETTINGS = [
    ("rotation-z", 1, "deg", 1),
    ("rotation-z", 3, "deg", 1),
    ("rotation-z", 10, "deg", 1),
    ("rotation-z", 20, "deg", 2),
    ("rotation-z", 60, "deg", 20),
    ("twisting-z", 20, "deg", 2),
    ("tapering-z", 0.3, "rad", 2),
    ("shearing-z", 0.1, "rad", 1),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=24)
    ap.add_argument("--points", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--method", default="forward")
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument(
        "--pools",
        default="max:deeppoly,max:tight,cascade:deeppoly",
        help="comma-separated pool:relaxation variants (pool written as max or cascade)",
    )
    ap.add_argument("--refine", default="0", help="comma-separated refinement depths (0: the fixed splits only)")
    ap.add_argument("--transforms", default=None, help="comma-separated: only these transformations")
    ap.add_argument("--relaxations", default="interval,taylor", help="comma-separated: interval, taylor")
    ap.add_argument("--name", default="pointcloud", help="file stem of the outputs")
    args = ap.parse_args()
    refines = [int(v) for v in args.refine.split(",")]
    relaxations = args.relaxations.split(",")
    settings = [st for st in SETTINGS if args.transforms is None or st[0] in args.transforms.split(",")]
    if not settings or any(r < 0 for r in refines) or not set(relaxations) <= {"interval", "taylor"}:
        raise SystemExit("error: no setting selected, a negative --refine or an unknown --relaxations entry")
    from tqdm import tqdm

    model, info = pc.train_pointnet(n_per_class=100, n_points=args.points, epochs=args.epochs, progress=True)
    x, y = pc.make_shapes(-(-args.objects // len(pc.CLASSES)), args.points, seed=20_000)
    x, y = x[: args.objects], y[: args.objects]
    variants = [tuple(v.split(":")) for v in args.pools.split(",")]
    jobs = [(s, rel, v, k) for s in settings for rel in relaxations for v in variants for k in refines]
    rows = []
    for (t, th, unit, splits), rel, (pool, maxpool), refine in tqdm(jobs, desc="pointcloud", unit="setting"):
        model.pool = pool
        r = pc.certify(model, x, y, t, th, unit, splits, rel, args.method, maxpool=maxpool, refine=refine)
        rows.append(
            {
                "transform": t,
                "theta": th,
                "unit": unit,
                "splits": splits,
                "refine": refine,
                "sub_ranges_per_object": sum(r.boxes) / max(sum(r.correct), 1),
                "relaxation": rel,
                "pool": pool,
                "maxpool": maxpool,
                "accuracy": r.accuracy,
                "certified": r.certified_fraction,
                "seconds_per_object": sum(r.seconds) / len(r.seconds),
            }
        )
    out = Path(args.out)
    write_json(
        out / f"{args.name}.json",
        {"benchmark": "pointcloud", "args": vars(args), "model": info, "environment": environment(), "rows": rows},
    )
    lines = [
        "# Point-cloud certification (3DCertify-style)",
        "",
        f"Command: `python benchmarks/pointcloud.py --objects {args.objects} --points {args.points} "
        f"--epochs {args.epochs} --method {args.method} --pools {args.pools} --refine {args.refine} "
        f"--relaxations {args.relaxations}"
        + (f" --transforms {args.transforms}" if args.transforms else "")
        + (f" --name {args.name}" if args.name != "pointcloud" else "")
        + f" --out {args.out}`",
        "",
        f"PointNet ({args.points} points, no T-nets), trained with rotation-z augmentation (+-60 deg): train accuracy "
        f"{info['train_accuracy']:.3f}, test accuracy {info['test_accuracy']:.3f}.  {args.objects} test clouds; "
        f"certified = correct and provably unchanged for every parameter in the range; linear bounds by "
        f"`{args.method}` mode; pool `max` = one global max pool relaxed by DeepPoly's rule (`deeppoly`) or by "
        "the pivot-difference bound (`tight`), `cascade` = pairwise maxima `b + relu(a - b)`; refine = how many "
        "times a failing sub-range may be halved (sub-ranges: bounded per correct object, on average).",
        "",
        "| transform | range | splits | refine | relaxation | pool | max-pool relaxation | accuracy | certified "
        "| sub-ranges | s / object |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['transform']} | +-{r['theta']:g} {r['unit']} | {r['splits']} | {r['refine']} | {r['relaxation']} | "
            f"{r['pool']} | {r['maxpool']} | "
            f"{r['accuracy']:.3f} | {r['certified']:.3f} | {r['sub_ranges_per_object']:.1f} | "
            f"{r['seconds_per_object']:.2f} |"
        )
    lines += ["", f"![certified fraction per setting]({args.name}.png)", ""]
    write_text(out / f"{args.name}.md", "\n".join(lines))
    _plot(
        rows,
        settings,
        [(rel, v, k) for rel in relaxations for v in variants for k in refines],
        out / f"{args.name}.png",
    )
    print("\n".join(lines[6:-2]))


def _plot(rows, settings, combos, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{t}\n+-{th:g} {u}" for t, th, u, _ in settings]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(settings) + 3), 4))
    width = 0.8 / len(combos)
    for i, (rel, (pool, maxpool), refine) in enumerate(combos):
        vals = [
            next(r["certified"] for r in rows if r["transform"] == t and r["theta"] == th and r["relaxation"] == rel
                 and r["pool"] == pool and r["maxpool"] == maxpool and r["refine"] == refine)
            for t, th, _, _ in settings
        ]  # fmt: skip
        offset = (i - (len(combos) - 1) / 2) * width
        label = f"{rel}, {pool} pool, {maxpool}" + (f", refine {refine}" if refine else "")
        ax.bar([k + offset for k in range(len(settings))], vals, width, label=label)
    ax.set_xticks(range(len(settings)), labels, fontsize=8)
    ax.set_ylabel("certified fraction of test clouds")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=min(len(combos), 4))  # off the bars
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
