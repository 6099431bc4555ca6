"""``boundflow.pointcloud.certify_job``: the point-cloud job from Python — same results as the
command, settings refused by field name before any training, a results folder only with ``out``."""

from __future__ import annotations

import json

import pytest

from boundflow.errors import JobError
from boundflow.pointcloud import CertifyJob, certify_job, parse_theta


def test_theta_forms():
    assert parse_theta("3deg") == ((-3.0, 3.0), "deg")
    assert parse_theta("-2:5deg") == ((-2.0, 5.0), "deg")
    assert parse_theta("0.1") == ((-0.1, 0.1), "rad")
    for bad in ("3 degrees", "1:2:3", "--", "e"):
        with pytest.raises(JobError, match="theta"):
            parse_theta(bad)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(n_clouds=0), "n_clouds must be >= 1"),
        (dict(theta="wide"), "theta 'wide'"),
        (dict(transform="spin-q"), "transform:"),
        (dict(method="magic"), "method: unknown method 'magic'"),
        (dict(method="crown:iters=3"), "unknown option 'iters'"),
        (dict(model="/nonexistent/model.pt"), "model /nonexistent/model.pt: no such file"),
        (dict(relaxation="box"), "relaxation 'box'"),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, change, message):
    with pytest.raises(JobError) as err:
        certify_job(CertifyJob(**change), tmp_path / "out")
    assert message in str(err.value), str(err.value)
    assert not (tmp_path / "out").exists()


def test_job_with_a_saved_model_matches_the_command(tmp_path):
    from boundflow.cli import main

    first = certify_job(CertifyJob(n_clouds=2, n_points=16, splits=2), tmp_path / "a", argv=["x"])
    assert (tmp_path / "a" / "model.pt").exists() and first.files[-1] == "model.pt"
    model = str(tmp_path / "a" / "model.pt")
    lib = certify_job(CertifyJob(model=model, n_clouds=2, n_points=16, splits=2, method="crown:maxpool=tight"))
    assert lib.out is None and lib.result.maxpool == "tight"
    argv = ["certify-pointcloud", "--model", model, "--n-clouds", "2", "--n-points", "16", "--splits", "2"]
    argv += ["--method", "crown", "--maxpool", "tight", "--out", str(tmp_path / "cli"), "--no-progress"]
    assert main(argv) == 0
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert [o["worst_margin"] for o in cli["objects"]] == [o["worst_margin"] for o in lib.summary["objects"]]
    assert cli["certified_fraction"] == lib.summary["certified_fraction"]
