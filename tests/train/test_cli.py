"""`boundflow train` end to end, resume, and the data file loaders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import boundflow.train as T
from boundflow.cli import main


def test_train_cli_writes_metrics_bounds_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--dataset",
            "moons",
            "--n-samples",
            "300",
            "--epsilon",
            "0.01",
            "--epochs",
            "2",
            "--batch-size",
            "50",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs_done"] == 2 and len(m["history"]) == 2
    assert 0 <= m["final"]["certified_accuracy"] <= 1
    for f in ("bounds.pt", "checkpoint.pt", "training.png", "regions.png"):
        assert (out / f).stat().st_size > 0
    b, cfg, extra = T.load_bounds(out / "bounds.pt")
    assert cfg.epochs == 2 and extra["dataset"] == "moons"


def test_train_cli_resume_continues_from_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "moons",
        "--n-samples",
        "200",
        "--epsilon",
        "0.001",
        "--batch-size",
        "50",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args + ["--epochs", "1"]) == 0
    assert main(args + ["--epochs", "3", "--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    fresh_out = tmp_path / "fresh"
    assert main(args[:-3] + ["--out", str(fresh_out), "--no-progress", "--epochs", "3"]) == 0
    fresh = json.loads((fresh_out / "metrics.json").read_text())
    assert resumed["epochs_done"] == 3
    assert resumed["final"]["mean_width"] == pytest.approx(fresh["final"]["mean_width"], rel=1e-12)


def test_train_cli_poison_and_label_flip(tmp_path):
    for threat in ("poison", "label-flip"):
        out = tmp_path / threat
        assert (
            main(
                [
                    "train",
                    "--dataset",
                    "moons",
                    "--n-samples",
                    "120",
                    "--threat",
                    threat,
                    "--k",
                    "1",
                    *(["--epsilon", "0.01"] if threat == "poison" else []),  # label flips move no feature
                    "--epochs",
                    "1",
                    "--batch-size",
                    "30",
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
        assert json.loads((out / "metrics.json").read_text())["threat"].startswith(threat.split("-")[0])


def test_load_npz_and_csv(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = T.load_file(tmp_path / "d.npz")
    assert d.n_features == 3 and len(d.x_train) + len(d.x_test) == 40
    rows = "a,b,c,label\n" + "\n".join(",".join(map(str, [*r, int(t)])) for r, t in zip(x, y))
    (tmp_path / "d.csv").write_text(rows)
    d2 = T.load_file(tmp_path / "d.csv")
    assert d2.n_features == 3
    (tmp_path / "bad.csv").write_text("1,2,0\n3,x,1\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: non-numeric"):
        T.load_file(tmp_path / "bad.csv")
    (tmp_path / "ragged.csv").write_text("1,2,0\n3,1\n")
    with pytest.raises(ValueError, match=r"ragged.csv:2: 2 columns, expected 3"):
        T.load_file(tmp_path / "ragged.csv")
    np.savez(tmp_path / "nolabels.npz", x=x)
    with pytest.raises(ValueError, match="missing array"):
        T.load_file(tmp_path / "nolabels.npz")


@pytest.mark.parametrize("name", ["moons", "digits", "digits-1v7", "digits-0v6", "breast-cancer", "iris"])
def test_embedded_datasets(name):
    d = T.load_dataset(name, n_samples=200)
    assert d.x_train.dtype == torch.float64 and d.y_train.dtype == torch.int64
    assert torch.isfinite(d.x_train).all() and d.n_classes >= 2
