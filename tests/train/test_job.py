"""``boundflow.train.run_job``: the whole training job from Python, without the command line —
the same box and metrics as the command, errors that name the job's fields, nothing written
without ``out``."""

from __future__ import annotations

import json

import pytest
import torch

from boundflow.errors import JobError
from boundflow.train import TrainJob, run_job

SMALL = dict(dataset="moons", n_samples=200, epochs=2, hidden=8, batch_size=50, val_fraction=0.0, keep_best=False)


def test_job_in_memory_writes_nothing_and_certifies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run_job(TrainJob(**SMALL, threat="poison", k=2))
    assert res.out is None and res.files == [] and list(tmp_path.iterdir()) == []
    assert res.bounds.epochs_done == 2 and res.kept.epochs_done == 2
    assert res.metrics["threat_model"] == {"threat": "poison", "epsilon": 0.01, "k": 2, "clip": None}
    assert 0 <= res.certification.certified <= 1
    assert res.metrics["final"]["certified_accuracy"] == res.certification.accuracy
    # the kept box contains the nominal (unpoisoned) run's parameters
    assert torch.isfinite(torch.tensor(res.kept.mean_width()))


def test_job_and_command_agree(tmp_path):
    from boundflow.cli import main

    res = run_job(TrainJob(**SMALL), tmp_path / "lib", argv=["x"])
    argv = ["train", "--n-samples", "200", "--epochs", "2", "--hidden", "8", "--batch-size", "50"]
    argv += ["--val-fraction", "0", "--keep-last", "--out", str(tmp_path / "cli"), "--no-progress"]
    assert main(argv) == 0
    lib = json.loads((tmp_path / "lib" / "metrics.json").read_text())
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert lib["final"] == cli["final"]
    untimed = [[{k: v for k, v in h.items() if k != "seconds"} for h in m["history"]] for m in (lib, cli)]
    assert untimed[0] == untimed[1]
    assert res.metrics["final"] == lib["final"]
    assert set(res.files) <= {p.name for p in (tmp_path / "lib").iterdir()}


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(epochs=0), "epochs must be >= 1, got 0"),
        (dict(threat="magic"), "threat 'magic': choose from"),
        (dict(step="sgd"), "step 'sgd': choose from"),
        (dict(threat="substitution", k=1), "threat substitution needs clip"),
        (dict(batch_size=1000), "batch_size 1000 is larger than the"),
        (dict(keep_best=True), "need validation data: val_fraction > 0"),
        (dict(loss="l1"), "loss 'l1': choose from"),
        (dict(executor="threads"), "executor 'threads'"),
        (dict(momentum=1.5), "momentum must be in [0, 1)"),
        (dict(threat="{x}"), "threat '{x}': choose from"),
    ],
)
def test_job_errors_name_the_fields_before_any_work(tmp_path, change, message):
    job = TrainJob(**{**SMALL, **change})
    with pytest.raises(JobError) as err:
        run_job(job, tmp_path / "out")
    assert message in str(err.value), str(err.value)
    assert "--" not in str(err.value).replace("-->", "")  # field names, not options
    assert not (tmp_path / "out").exists()


def test_job_error_shows_options_on_the_command_line_and_keeps_braces_of_paths():
    e = JobError("{batch_size} 10 is larger than {k}; {out} /tmp/{{a}}")
    assert str(e) == "batch_size 10 is larger than k; out /tmp/{a}"
    assert e.as_options() == "--batch-size 10 is larger than --k; --out /tmp/{a}"
    assert str(JobError(f"{{data}} {JobError.literal('/x/{y}.npz')}: no such file")) == "data /x/{y}.npz: no such file"


def test_resumed_job_refuses_another_configuration(tmp_path):
    run_job(TrainJob(**SMALL), tmp_path)
    with pytest.raises(JobError, match="different configuration .*lr 0.1 -> 0.2.*use another out"):
        run_job(TrainJob(**{**SMALL, "lr": 0.2}), tmp_path, resume=True)
    with pytest.raises(JobError, match="already holds a previous run's results"):
        run_job(TrainJob(**SMALL), tmp_path)
    lines = []
    res = run_job(TrainJob(**{**SMALL, "epochs": 3}), tmp_path, resume=True, log=lines.append)
    assert lines == ["resuming from epoch 2"] and res.bounds.epochs_done == 3
