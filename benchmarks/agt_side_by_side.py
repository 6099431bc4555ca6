"""Abstract Gradient Training (AGT) and BoundFlow side by side: the same data, model, initial
weights, threat model and hyper-parameters, both in float64 on this machine's CPUs.

Settings (AGT's notebook settings where the data can be had here, otherwise their shapes):

* ``regression``: AGT's UCI notebook (houseelectric: 2,049,280 points, 11 features) on a
  generated regression of ``--n-regression`` points (default 2,000,000) with 11 features; MLP
  11-64-1, batch 20,000, 200 points per batch poisoned by eps 0.01, lr 0.005, one epoch, MSE.
* ``label_flip``: AGT's MNIST notebook (PCA to 32 features, linear model, full batch, lr 5 with
  AGT's decay 1.0 — 5 then 2.5 —, two epochs, flipped labels) on scikit-learn's 8x8 digits
  (1,437 training points, PCA to 32), for 1, 5 and 10 flipped labels.
* ``feature_poison``: a generated 200,000-point binary task, 11-64-1, batch 20,000, 200 points
  per batch poisoned by eps 0.01, lr 0.05, one epoch, binary cross-entropy.
* ``small_batches``: the same task at batch 2,000 (k 20; 100 steps) without and with per-sample
  gradient clipping (clamp 0.1): where both boxes explode, and what clipping keeps.
* ``unlearning`` (200 removals per batch) and ``privacy`` (10 substitutions per batch, clamp
  0.1) on the binary task at batch 20,000.

Both tools' boxes are scored by the same code (BoundFlow's ``certify``/``error_bounds`` with
interval bounds, which is AGT's evaluation too).  Times are medians of ``--repeats`` runs
(``--big-repeats`` for the regression); the ratio column is AGT's time over BoundFlow's.

AGT is imported from a source checkout (``--agt``: a clone or ``fetch`` of
psosnin/AbstractGradientTraining); it needs ``pydantic`` (``pip install --target DIR pydantic``,
then ``--agt-deps DIR``).  ``gurobipy``, which AGT imports for its MIP models only, is replaced
by a stub module when it is not installed (no setting here uses it).  Without ``--agt`` only
BoundFlow runs.

    python benchmarks/agt_side_by_side.py --agt AGT --agt-deps DEPS --out docs/benchmarks/agt
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boundflow.train as T  # noqa: E402
from benchmarks._common import environment, median, write_json, write_text  # noqa: E402

D = torch.float64
SETTINGS = ("regression", "label_flip", "feature_poison", "small_batches", "unlearning", "privacy")


def _import_agt(path: str | None, deps: str | None):
    """AGT's package from a source checkout, or None."""
    if path is None:
        return None
    for p in (deps, path):
        if p:
            sys.path.insert(0, p)
    try:
        import gurobipy  # noqa: F401
    except ImportError:
        stub = types.ModuleType("gurobipy")
        stub.__file__ = "<stub: gurobipy is not installed; AGT's MIP models are not used here>"

        class _Absent:
            def __getattr__(self, name):
                return _Absent()

            def __call__(self, *a, **k):
                raise RuntimeError("gurobipy is not installed (stub)")

            def __or__(self, other):
                return self

            __ror__ = __or__

        def _attr(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Absent()

        stub.__getattr__ = _attr
        sys.modules["gurobipy"] = stub
    import abstract_gradient_training as agt

    return agt


# ---------------------------------------------------------------------------------------- data


def _regression_data(n: int, n_test: int = 10_000, seed: int = 0):
    """11 standard-normal features; a smooth non-linear target with noise, scaled to [0, 1] (as
    AGT's notebook scales houseelectric's)."""
    g = np.random.default_rng(seed)
    x = g.standard_normal((n + n_test, 11))
    w, v = g.standard_normal(11) / 3, g.standard_normal(11) / 3
    y = 1 / (1 + np.exp(-(x @ w + np.sin(x @ v)))) + 0.05 * g.standard_normal(n + n_test)
    y = (y - y[:n].min()) / (y[:n].max() - y[:n].min())
    t = torch.from_numpy
    return t(x[:n]), t(y[:n]), t(x[n:]), t(y[n:])


def _binary_data(n: int = 200_000, n_test: int = 10_000, seed: int = 0):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n + n_test, 11))
    w = g.standard_normal(11)
    y = ((x @ w + np.sin(2 * x[:, 0]) + 0.3 * g.standard_normal(n + n_test)) > 0).astype(np.int64)
    t = torch.from_numpy
    return t(x[:n]), t(y[:n]), t(x[n:]), t(y[n:])


def _digits_pca():
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.2, random_state=0, stratify=y)
    pca = PCA(n_components=32, random_state=0).fit(x_tr)
    t = torch.from_numpy
    return t(pca.transform(x_tr)), t(y_tr), t(pca.transform(x_te)), t(y_te)


def _mlp(d_in: int, d_out: int, hidden: int | None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if hidden is None:
        return torch.nn.Sequential(torch.nn.Linear(d_in, d_out)).to(D)
    return torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, d_out)).to(D)


# ---------------------------------------------------------------------------------------- runs


def _run_agt(agt, kind: str, model, x, y, batch: int, cfg: dict):
    """One AGT run: (lower, upper, nominal) dicts in ``model``'s parameter order, seconds, and None
    (AGT reports no per-step widths)."""
    from abstract_gradient_training.bounded_models import IntervalBoundedModel

    bm = IntervalBoundedModel(copy.deepcopy(model))
    config = agt.AGTConfig(fragsize=batch, log_level="WARNING", **cfg)
    labels = y.to(D) if cfg["loss"] in ("mse", "binary_cross_entropy") else y
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=batch, shuffle=False)
    train = {
        "poison": agt.poison_certified_training,
        "unlearn": agt.unlearning_certified_training,
        "privacy": agt.privacy_certified_training,
    }[kind]
    t0 = time.perf_counter()
    train(bm, config, dl)
    seconds = time.perf_counter() - t0
    names = [n for n, _ in model.named_parameters()]
    as_dict = lambda ts: {n: t.detach().reshape(p.shape).clone() for (n, p), t in zip(model.named_parameters(), ts)}  # noqa: E731
    assert len(bm.param_n) == len(names)
    return as_dict(bm.param_l), as_dict(bm.param_u), as_dict(bm.param_n), seconds, None


def _run_boundflow(model, data: T.BoundedDataset, config: T.TrainConfig):
    t0 = time.perf_counter()
    b = T.certified_training(model, data, config)
    secs = time.perf_counter() - t0
    return b.lower, b.upper, b.nominal, secs, [w for h in b.history for w in h["step_widths"]]


def _score(model, lower, upper, nominal, x_test, y_test, regression: bool) -> dict:
    box = (lower, upper)
    widths = torch.cat([(upper[n] - lower[n]).reshape(-1) for n in lower])
    out = {"mean_width": float(widths.mean()), "max_width": float(widths.max())}
    finite = bool(torch.isfinite(widths).all())
    if regression:
        nom = T.error_bounds(model, (nominal, nominal), x_test, y_test)
        out["nominal_mse"] = nom.mse_upper
        out["certified_mse_upper"] = T.error_bounds(model, box, x_test, y_test).mse_upper if finite else float("inf")
    else:
        out["nominal_accuracy"] = T.certify(model, (nominal, nominal), x_test, y_test).accuracy
        out["certified_accuracy"] = T.certify(model, box, x_test, y_test).accuracy if finite else 0.0
    return out


def _compare(name, agt, model, data, config, agt_kind, agt_cfg, test, repeats, regression=False) -> list[dict]:
    rows = []
    runs = {"BoundFlow": lambda: _run_boundflow(model, data, config)}
    if agt is not None:
        runs["AGT"] = lambda: _run_agt(agt, agt_kind, model, data.x, data.y, config.batch_size, agt_cfg)
    boxes = {}
    for tool, run in runs.items():
        times = []
        for _ in range(repeats):
            lo, hi, nom, s, step_widths = run()
            times.append(s)
        boxes[tool] = (lo, hi, nom)
        row = {"setting": name, "tool": tool, "seconds": median(times), "runs": len(times)}
        row["seconds_per_epoch"] = row["seconds"] / max(config.epochs, 1)
        row.update(_score(model, lo, hi, nom, *test, regression))
        if step_widths is not None:  # BoundFlow's mean parameter width after every step
            row["step_widths"] = step_widths
        rows.append(row)
        print(
            f"  {name:<28} {tool:<9} "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in ("setting", "tool")),
            flush=True,
        )
    if len(boxes) == 2:
        (bl, bh, bn), (al, ah, an) = boxes["BoundFlow"], boxes["AGT"]
        diff = max(float(torch.maximum((bl[n] - al[n]).abs(), (bh[n] - ah[n]).abs()).max()) for n in bl)
        nom = max(float((bn[n] - an[n]).abs().max()) for n in bn)
        # inside AGT's box up to rounding (1e-12 relative): the rules are the same, the order of sums not
        tol = {n: 1e-12 * (1 + torch.maximum(al[n].abs(), ah[n].abs())) for n in bl}
        tighter = all(bool((bl[n] >= al[n] - tol[n]).all() and (bh[n] <= ah[n] + tol[n]).all()) for n in bl)
        for r in rows:
            r.update(max_bound_difference=diff, max_nominal_difference=nom, boundflow_box_inside_agt=tighter)
        rows[0]["time_ratio_agt_over_boundflow"] = rows[1]["seconds"] / rows[0]["seconds"]
        ratio = rows[0]["time_ratio_agt_over_boundflow"]
        print(
            f"  {name:<28} AGT/BoundFlow time {ratio:.2f}x; max |bound diff| {diff:.3g}; "
            f"BoundFlow box inside AGT's (to 1e-12): {tighter}",
            flush=True,
        )
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _warm_up(agt) -> None:
    """One tiny untimed run of each tool, so that no timed run pays the first call's set-up."""
    x, y, _, _ = _binary_data(200, 10)
    cfg = T.TrainConfig(epochs=1, lr=0.05, batch_size=100, loss="bce")
    _run_boundflow(_mlp(11, 1, 8), T.poison(x, y, k=1, eps=0.01), cfg)
    if agt is not None:
        agt_cfg = dict(learning_rate=0.05, epsilon=0.01, k_poison=1, n_epochs=1, loss="binary_cross_entropy")
        _run_agt(agt, "poison", _mlp(11, 1, 8), x, y, 100, agt_cfg)


def run_settings(settings, agt, n_regression: int, repeats: int, big_repeats: int) -> list[dict]:
    _warm_up(agt)
    rows: list[dict] = []
    if "regression" in settings:
        x, y, xt, yt = _regression_data(n_regression)
        data = T.poison(x, y, k=200, eps=0.01, regression=True)
        cfg = T.TrainConfig(epochs=1, lr=0.005, batch_size=20_000, loss="mse")
        agt_cfg = dict(learning_rate=0.005, epsilon=0.01, k_poison=200, n_epochs=1, loss="mse")
        name = f"regression n={n_regression:,}"
        rows += _compare(name, agt, _mlp(11, 1, 64), data, cfg, "poison", agt_cfg, (xt, yt), big_repeats, True)
    if "label_flip" in settings:
        x, y, xt, yt = _digits_pca()
        for k in (1, 5, 10):
            data = T.label_flip(x, y, k=k, n_classes=10)
            cfg = T.TrainConfig(epochs=2, lr=5.0, lr_decay=0.5, batch_size=len(x), loss="cross_entropy")
            agt_cfg = dict(learning_rate=5.0, lr_decay=1.0, label_k_poison=k, n_epochs=2, loss="cross_entropy")
            rows += _compare(
                f"digits label flip k={k}", agt, _mlp(32, 10, None), data, cfg, "poison", agt_cfg, (xt, yt), repeats
            )
    binary = _binary_data() if set(settings) & {"feature_poison", "small_batches", "unlearning", "privacy"} else None
    model = _mlp(11, 1, 64)
    if "feature_poison" in settings:
        x, y, xt, yt = binary
        cfg = T.TrainConfig(epochs=1, lr=0.05, batch_size=20_000, loss="bce")
        agt_cfg = dict(learning_rate=0.05, epsilon=0.01, k_poison=200, n_epochs=1, loss="binary_cross_entropy")
        rows += _compare(
            "binary poison B=20000",
            agt,
            model,
            T.poison(x, y, k=200, eps=0.01),
            cfg,
            "poison",
            agt_cfg,
            (xt, yt),
            repeats,
        )
    if "small_batches" in settings:
        x, y, xt, yt = binary
        for clip in (None, 0.1):
            cfg = T.TrainConfig(epochs=1, lr=0.05, batch_size=2_000, loss="bce", clip=clip)
            agt_cfg = dict(learning_rate=0.05, epsilon=0.01, k_poison=20, n_epochs=1, loss="binary_cross_entropy")
            if clip is not None:
                agt_cfg.update(clip_gamma=clip, clip_method="clamp")
            name = f"binary poison B=2000{' clip 0.1' if clip else ''}"
            rows += _compare(
                name, agt, model, T.poison(x, y, k=20, eps=0.01), cfg, "poison", agt_cfg, (xt, yt), repeats
            )
    if "unlearning" in settings:
        x, y, xt, yt = binary
        cfg = T.TrainConfig(epochs=1, lr=0.05, batch_size=20_000, loss="bce")
        agt_cfg = dict(learning_rate=0.05, k_unlearn=200, n_epochs=1, loss="binary_cross_entropy")
        rows += _compare(
            "binary unlearning k=200", agt, model, T.removal(x, y, 200), cfg, "unlearn", agt_cfg, (xt, yt), repeats
        )
    if "privacy" in settings:
        x, y, xt, yt = binary
        cfg = T.TrainConfig(epochs=1, lr=0.05, batch_size=20_000, loss="bce", clip=0.1)
        agt_cfg = dict(learning_rate=0.05, k_private=10, clip_gamma=0.1, clip_method="clamp", n_epochs=1,
                       loss="binary_cross_entropy")  # fmt: skip
        rows += _compare(
            "binary privacy k=10 clip 0.1",
            agt,
            model,
            T.substitution(x, y, 10),
            cfg,
            "privacy",
            agt_cfg,
            (xt, yt),
            repeats,
        )
    return rows


# ---------------------------------------------------------------------------------------- report


def _table(rows: list[dict]) -> str:
    head = "| setting | tool | certified | nominal | mean width | max width | s / epoch | AGT / BoundFlow time"
    head += " | max bound diff |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        if "certified_mse_upper" in r:
            cert, nom = f"MSE <= {r['certified_mse_upper']:.4g}", f"MSE {r['nominal_mse']:.4g}"
        else:
            cert, nom = f"acc >= {r['certified_accuracy']:.3f}", f"acc {r['nominal_accuracy']:.3f}"
        ratio = f"{r['time_ratio_agt_over_boundflow']:.2f}x" if "time_ratio_agt_over_boundflow" in r else ""
        diff = f"{r['max_bound_difference']:.2g}" if "max_bound_difference" in r and r["tool"] == "BoundFlow" else ""
        lines.append(
            f"| {r['setting']} | {r['tool']} | {cert} | {nom} | {r['mean_width']:.3g} | {r['max_width']:.3g} | "
            f"{r['seconds_per_epoch']:.1f} | {ratio} | {diff} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in rows))
    tools = list(dict.fromkeys(r["tool"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(tools)
    for j, tool in enumerate(tools):
        cert, secs = [], []
        for s in settings:
            r = next((r for r in rows if r["setting"] == s and r["tool"] == tool), None)
            if r is None:
                cert.append(np.nan)
                secs.append(np.nan)
                continue
            if "certified_accuracy" in r:
                cert.append(r["certified_accuracy"] / max(r["nominal_accuracy"], 1e-12))
            else:
                cert.append(r["nominal_mse"] / r["certified_mse_upper"])
            secs.append(r["seconds_per_epoch"])
        pos = np.arange(len(settings)) + j * width
        axes[0].bar(pos, cert, width, label=tool)
        axes[1].bar(pos, secs, width, label=tool)
    axes[1].set_yscale("log")
    titles = ("certified / nominal (accuracy; regression: nominal MSE / certified MSE)", "seconds per epoch (CPU, log)")
    for ax, title in zip(axes, titles):
        ax.set_xticks(np.arange(len(settings)) + width * (len(tools) - 1) / 2)
        ax.set_xticklabels(settings, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agt", help="path of an AbstractGradientTraining source checkout")
    ap.add_argument("--agt-deps", help="extra import path for AGT's dependencies (pydantic)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {', '.join(SETTINGS)}")
    ap.add_argument("--n-regression", type=int, default=2_000_000)
    ap.add_argument("--repeats", type=int, default=3, help="runs per tool on the small settings (median)")
    ap.add_argument("--big-repeats", type=int, default=1, help="runs per tool on the regression")
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json, table.md, side_by_side.png")
    ap.add_argument("--replot", action="store_true", help="write table.md and the plot again from --out's results.json")
    args = ap.parse_args(argv)
    if args.replot:
        import json

        rows = json.loads((args.out / "results.json").read_text())["rows"]
        write_text(args.out / "table.md", _table(rows))
        _plot(rows, args.out / "side_by_side.png")
        print(_table(rows))
        return 0
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        ap.error(f"--settings: unknown {', '.join(bad)}; choose from {', '.join(SETTINGS)}")
    if args.agt is not None and not (Path(args.agt) / "abstract_gradient_training").is_dir():
        ap.error(f"--agt {args.agt}: no abstract_gradient_training package there")
    if (args.out / "results.json").exists():
        ap.error(f"--out {args.out}: results.json exists; choose a new folder (results are never overwritten)")
    agt = _import_agt(args.agt, args.agt_deps)
    rows = run_settings(settings, agt, args.n_regression, args.repeats, args.big_repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", {"environment": environment(0), "rows": rows})
    write_text(args.out / "table.md", _table(rows))
    _plot(rows, args.out / "side_by_side.png")
    print(_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
