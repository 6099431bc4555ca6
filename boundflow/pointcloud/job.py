"""A whole point-cloud certification job as one call: the model (loaded, or a PointNet trained
on the embedded shapes), the clouds, :func:`~boundflow.pointcloud.certify` over a transformation
range, and a results folder (``results.json``, ``results.md``, ``cloud.png``, ``model.pt``).
``boundflow certify-pointcloud`` parses its options into a :class:`CertifyJob` and prints the
:class:`CertifyJobResult` of :func:`certify_job`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from boundflow.errors import JobError
from boundflow.outputs import JobOutput

__all__ = ["CertifyJob", "CertifyJobResult", "certify_job", "parse_theta"]


def parse_theta(text: str) -> tuple[tuple[float, float], str]:
    """``"3deg"`` -> ((-3, 3), "deg"); ``"-2:5deg"`` -> ((-2, 5), "deg"); ``"0.1"`` -> ((-0.1, 0.1), "rad").
    Raises :class:`~boundflow.errors.JobError` for any other form."""
    m = re.fullmatch(r"\s*(-?[\d.eE+-]+)(?::(-?[\d.eE+-]+))?\s*(deg|rad)?\s*", text)
    try:
        if not m:
            raise ValueError
        a = float(m.group(1))
        lo, hi = (-abs(a), abs(a)) if m.group(2) is None else (a, float(m.group(2)))
    except ValueError:
        shown = JobError.literal(repr(text))
        raise JobError(f"{{theta}} {shown}: expected forms like 3deg, 0.05rad, -2:5deg or 0.1") from None
    return (lo, hi), m.group(3) or "rad"


@dataclass
class CertifyJob:
    """What to certify.  ``model``: a PointNet state dict saved by a job (default: train one on
    the embedded shapes with ``n_points`` points per cloud and save it as ``model.pt``).
    ``data``: an ``.npz`` with ``points`` (M, N, 3) and optional ``labels`` (default: the model's
    own predictions); otherwise embedded shapes.  The first ``n_clouds`` clouds are certified
    against ``transform`` for every theta in ``theta`` (see :func:`parse_theta`), split into
    ``splits`` sub-ranges per parameter and refined up to ``refine`` times.  ``method`` is the
    network's bound method, ``maxpool`` the global max pool's relaxation, ``pool`` how that pool
    is written (see :func:`boundflow.pointcloud.certify`)."""

    model: str | None = None
    data: str | None = None
    transform: str = "rotation-z"
    theta: str = "3deg"
    splits: int = 10
    refine: int = 0
    relaxation: str = "taylor"
    method: str = "forward"
    pool: str = "max"
    maxpool: str | None = None
    n_clouds: int = 24
    n_points: int = 64
    seed: int = 0

    def check(self) -> tuple[tuple[float, float], str]:
        """The theta range and unit; :class:`~boundflow.errors.JobError` naming the first setting
        that cannot work (before a model is trained or loaded)."""
        from boundflow.domains.registry import parse_method
        from boundflow.pointcloud.transforms import parse as parse_transform

        theta, unit = parse_theta(self.theta)
        checks = [
            (self.n_clouds >= 1, f"{{n_clouds}} must be >= 1, got {self.n_clouds}"),
            (self.n_points >= 1, f"{{n_points}} must be >= 1, got {self.n_points}"),
            (self.splits >= 1, f"{{splits}} must be >= 1, got {self.splits}"),
            (self.refine >= 0, f"{{refine}} must be >= 0, got {self.refine}"),
            (self.relaxation in ("taylor", "interval"), f"{{relaxation}} {self.relaxation!r}: taylor or interval"),
            (self.pool in ("max", "cascade"), f"{{pool}} {self.pool!r}: max or cascade"),
            (
                self.model is None or Path(self.model).is_file(),
                f"{{model}} {JobError.literal(self.model)}: no such file",
            ),
            (self.data is None or Path(self.data).is_file(), f"{{data}} {JobError.literal(self.data)}: no such file"),
        ]
        why = next((msg for ok, msg in checks if not ok), None)
        if why:
            raise JobError(why)
        for name, check in (("transform", parse_transform), ("method", parse_method)):
            try:
                check(getattr(self, name))
            except ValueError as e:
                raise JobError(f"{{{name}}}: {JobError.literal(e)}") from None
        return theta, unit


@dataclass
class CertifyJobResult(JobOutput):
    """What :func:`certify_job` made: the model, the clouds and labels certified, the
    :class:`~boundflow.pointcloud.CertifyResult`, the summary written to ``results.json``, the
    results folder and its files, and a short report (``lines``)."""

    model: nn.Module
    points: torch.Tensor
    labels: torch.Tensor
    result: object
    summary: dict


def certify_job(
    job: CertifyJob,
    out: str | Path | None = None,
    *,
    force: bool = False,
    progress: bool = False,
    argv: list[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> CertifyJobResult:
    """Run ``job``.  Every :class:`JobError` (settings, an ``out`` folder holding a previous run's
    results without ``force``) comes before a model is trained.  ``log`` receives progress
    lines (the trained model's accuracy).  Guarantee: as :func:`boundflow.pointcloud.certify`."""
    from boundflow.pointcloud import CLASSES, PointNet, certify, load_npz, make_shapes, train_pointnet

    theta, unit = job.check()
    folder = None
    if out is not None:
        from boundflow.outputs import claim, record

        names = ["results.json", "results.md", "cloud.png"] + ([] if job.model else ["model.pt"])
        folder = claim(out, names, force=force)
        record(folder, argv)
    if job.model:
        state = torch.load(job.model, weights_only=True)
        model = PointNet(state.pop("_n_classes").item() if "_n_classes" in state else len(CLASSES)).double()
        model.load_state_dict(state)
    else:
        model, info = train_pointnet(n_points=job.n_points, seed=job.seed, progress=progress)
        if folder is not None:
            from boundflow.atomic import atomic_torch_save

            state = dict(model.state_dict())
            state["_n_classes"] = torch.tensor(len(CLASSES))
            atomic_torch_save(state, folder / "model.pt")
        if log:
            log(f"trained PointNet: train acc {info['train_accuracy']:.3f}, test acc {info['test_accuracy']:.3f}")
    model.pool = job.pool
    model.eval()
    if job.data:
        x, y = load_npz(job.data)
        if y is None:
            with torch.no_grad():
                y = model(x).argmax(1)  # certify the model's own predictions
    else:
        x, y = make_shapes(max(1, -(-job.n_clouds // len(CLASSES))), job.n_points, seed=job.seed + 20_000)
    x, y = x[: job.n_clouds], y[: job.n_clouds]
    res = certify(
        model, x, y, job.transform, theta, unit, job.splits, job.relaxation, job.method,
        progress=progress, maxpool=job.maxpool, refine=job.refine,
    )  # fmt: skip
    rows = [
        {"object": i, "label": int(y[i]), "correct": c, "certified": k, "worst_margin": m, "seconds": s, "boxes": b}
        for i, (c, k, m, s, b) in enumerate(
            zip(res.correct, res.certified, res.worst_margin, res.seconds, res.boxes, strict=True)
        )
    ]
    summary = {
        "transform": job.transform,
        "theta": list(theta),
        "unit": unit,
        "splits": job.splits,
        "refine": job.refine,
        "relaxation": job.relaxation,
        "method": job.method,
        "pool": job.pool,
        "maxpool": res.maxpool,
        "accuracy": res.accuracy,
        "certified_fraction": res.certified_fraction,
        "seconds_per_object": sum(res.seconds) / max(len(res.seconds), 1),
        "objects": rows,
    }
    table = _table(job, theta, unit, res, summary, rows)
    done = CertifyJobResult(model, x, y, res, summary, out=folder, lines=table[:3])
    if folder is not None:
        _write(done, job, unit, table)
    return done


def _table(job: CertifyJob, theta, unit: str, res, summary: dict, rows: list[dict]) -> list[str]:
    """``results.md``: a heading, the summary line and one row per cloud."""
    lines = [
        f"# {job.transform} in {theta[0]:g}..{theta[1]:g} {unit}, {job.splits} splits"
        + (f" (refined up to {job.refine} times)" if job.refine else "")
        + f", {job.relaxation}, {res.maxpool} max pool",
        "",
        f"accuracy {res.accuracy:.3f}, certified {res.certified_fraction:.3f}, "
        f"{summary['seconds_per_object']:.2f} s per object",
        "",
        "| object | label | correct | certified | worst margin | sub-ranges bounded | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['object']} | {r['label']} | {r['correct']} | {r['certified']} | {r['worst_margin']:.3g} | "
            f"{r['boxes']} | {r['seconds']:.2f} |"
        )
    return lines


def _write(done: CertifyJobResult, job: CertifyJob, unit: str, table: list[str]) -> None:
    """``results.json``, ``results.md`` and ``cloud.png`` (the first certified cloud, else the first)."""
    from boundflow.atomic import atomic_write_text
    from boundflow.pointcloud.plots import plot_cloud

    folder, res = done.out, done.result
    atomic_write_text(folder / "results.json", json.dumps(done.summary, indent=2, default=float))
    atomic_write_text(folder / "results.md", "\n".join(table) + "\n")
    first = next((i for i, k in enumerate(res.certified) if k), 0)
    plot_cloud(done.points[first], job.transform, res.theta_lower, res.theta_upper, folder / "cloud.png",
               title=f"object {first} ({'certified' if res.certified[first] else 'not certified'})",
               unit=unit)  # fmt: skip
    done.files = ["results.json", "results.md", "cloud.png"] + ([] if job.model else ["model.pt"])
    done.lines.append(f"wrote {folder}/results.json, results.md, cloud.png")
