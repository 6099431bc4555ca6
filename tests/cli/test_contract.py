"""The command line's contract, per subcommand: a bad input gives one line
``boundflow: error: ...`` on stderr, exit code 2, no traceback, and no file written; results of
a previous run are never replaced without ``--force``; ``--version``, defaults in ``--help``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from boundflow.cli import main
from tests.support.cli_contract import assert_user_error

ROOT = Path(__file__).resolve().parents[2]


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    out = str(tmp / "out")
    return [
        (["demo", "--eps", "-1", "--out", out], "--eps must be > 0"),
        (["demo", "--param-radius", "-0.1", "--out", out], "--param-radius must be >= 0"),
        (["train", "--epochs", "0", "--out", out], "--epochs must be >= 1"),
        (["train", "--threat", "foo", "--out", out], "invalid choice: 'foo'"),
        (["train", "--group", "0", "--method", "lp", "--out", out], "--group must be >= 1"),
        (["train", "--data", str(tmp / "missing.npz"), "--out", out], "missing.npz"),
        (["train", "--regression", "--out", out], "--regression needs --data"),
        (["train", "--data", str(tmp / "r.npz"), "--regression", "--threat", "label-flip", "--out", out], "label-flip"),
        (["verify", str(tmp / "missing.onnx"), str(tmp / "p.vnnlib"), "--out", str(tmp / "out.txt")], "no such file"),
        (["vnncomp", str(tmp / "missing.csv"), "--out", out], "missing.csv"),
        (["certify-pointcloud", "--transform", "spin-z", "--out", out], "unknown transformation 'spin-z'"),
        (["certify-pointcloud", "--n-clouds", "0", "--out", out], "--n-clouds must be >= 1"),
        (["certify-pointcloud", "--method", "magic", "--out", out], "unknown method 'magic'"),
        (["bench", "tightness", "--methods", "ibp,magic", "--out", out], "--methods: unknown 'magic'"),
        (["bench", "training", "--group", "0", "--out", out], "--group must be >= 1"),
        (["--threads", "0", "bench", "training", "--out", out], "--threads must be >= 1"),
        ([], "the following arguments are required: command"),
    ]


@pytest.mark.parametrize("case", range(17))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case):
    argv, pattern = _bad_inputs(tmp_path)[case]
    assert_user_error(capsys, argv, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a refused command wrote files"


def test_cases_cover_every_subcommand(tmp_path):
    from boundflow.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    covered = {argv[0] for argv, _ in _bad_inputs(tmp_path) if argv and not argv[0].startswith("-")}
    assert covered == set(sub.choices)


def test_previous_results_are_not_replaced_without_force(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--n-samples", "200", "--hidden", "4", "--out", str(out), "-q"]
    assert main(argv) == 0
    before = (out / "metrics.json").read_bytes()
    assert_user_error(capsys, argv, "already holds a previous run's results .*--force")
    assert (out / "metrics.json").read_bytes() == before
    assert main([*argv, "--force", "--seed", "1"]) == 0
    assert (out / "metrics.json").read_bytes() != before
    import json

    run = json.loads((out / "run.json").read_text())
    assert "--force" in run["command"] and run["torch"] and run["machine"]
    assert (out / "metrics.json").stat().st_mode & 0o044  # readable by others (umask allowing)


def test_version_and_defaults_in_help(capsys):
    import boundflow

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"boundflow {boundflow.__version__}"
    with pytest.raises(SystemExit):
        main(["bench", "training", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 10)" in text and "--force" in text and "--threads" in text


def test_a_command_line_error_has_no_traceback_in_a_fresh_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "boundflow", "train", "--epochs", "0", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == "boundflow: error: --epochs must be >= 1, got 0"


def _every_option():
    import argparse

    from boundflow.cli import build_parser
    from boundflow.cli.main import _all_subparsers

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [(p.prog, a) for p in _all_subparsers(sub) for a in p._actions if a.option_strings]


def test_every_option_has_help_and_one_name_per_concept():
    opts = _every_option()
    assert len(opts) > 100
    missing = [(prog, a.option_strings) for prog, a in opts if not a.help]
    assert missing == []
    # a concept keeps its name across subcommands: counts are --n-*, radii --eps, one solver
    # call's budget --time-limit; the pre-vocabulary spellings exist only as hidden aliases
    visible = {s for _, a in opts if a.help != "==SUPPRESS==" for s in a.option_strings}
    for old in ("--samples", "--objects", "--points", "--time", "--epsilon-radius"):
        assert old not in visible, old
    assert {"--n-samples", "--n-clouds", "--n-points", "--n-inputs", "--eps", "--time-limit"} <= visible
    # the same option means the same thing: one help text per name (outside subcommand-specific ones)
    helps: dict[str, set[str]] = {}
    for _, a in opts:
        if a.help != "==SUPPRESS==" and a.option_strings[0] in ("--seed", "--executor", "--address", "--no-progress"):
            helps.setdefault(a.option_strings[0], set()).add(a.help.split(" (")[0])
    assert all(len(h) == 1 for h in helps.values()), helps


def test_renamed_options_still_work_with_a_note(tmp_path, capsys):
    from boundflow.cli import build_parser

    p = build_parser()
    args = p.parse_args(["train", "--samples", "300", "--method", "interval", "--out", str(tmp_path)])
    assert args.n_samples == 300 and args.method == "ibp"
    assert "--samples is now --n-samples" in capsys.readouterr().err
    args = p.parse_args(["certify-pointcloud", "--objects", "2", "--points", "8"])
    assert (args.n_clouds, args.n_points) == (2, 8)
    args = p.parse_args(["bench", "tightness", "--points", "4"])
    assert args.n_inputs == 4
    assert p.parse_args(["train"]).n_samples == 1000  # the alias leaves the default alone


def test_interval_is_another_name_for_ibp():
    import torch

    import boundflow as bf
    from boundflow.train import TrainConfig

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    x = torch.rand(2, 3, dtype=torch.float64)
    a = bf.compute_bounds(net, x - 0.1, x + 0.1, method="interval")
    b = bf.compute_bounds(net, x - 0.1, x + 0.1, method="ibp")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert TrainConfig(epochs=1, lr=0.1, batch_size=1, step="interval").step == "ibp"
    with pytest.warns(DeprecationWarning, match="now TrainConfig\\(step=...\\)"):  # the old name, still accepted
        old = TrainConfig(epochs=1, lr=0.1, batch_size=1, method="interval")
    assert old.step == old.method == "ibp"
    with pytest.raises(ValueError, match="give step= only"):
        TrainConfig(epochs=1, lr=0.1, batch_size=1, step="lp", method="milp")
    with pytest.raises(ValueError, match="unknown training step 'crown'"):
        TrainConfig(epochs=1, lr=0.1, batch_size=1, step="crown")
