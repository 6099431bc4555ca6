"""The command line's contract, per subcommand: a bad input gives one line
``boundflow: error: ...`` on stderr, exit code 2, no traceback, and no file written; results of
a previous run are never replaced without ``--force``; ``--version``, defaults in ``--help``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from boundflow.cli import main
from tests.cli_contract import assert_user_error

ROOT = Path(__file__).resolve().parents[1]


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    out = str(tmp / "out")
    return [
        (["demo", "--eps", "-1", "--out", out], "--eps must be > 0"),
        (["demo", "--param-radius", "-0.1", "--out", out], "--param-radius must be >= 0"),
        (["train", "--epochs", "0", "--out", out], "--epochs must be >= 1"),
        (["train", "--threat", "foo", "--out", out], "invalid choice: 'foo'"),
        (["train", "--group", "0", "--method", "lp", "--out", out], "--group must be >= 1"),
        (["train", "--data", str(tmp / "missing.npz"), "--out", out], "missing.npz"),
        (["verify", str(tmp / "missing.onnx"), str(tmp / "p.vnnlib"), "--out", str(tmp / "out.txt")], "no such file"),
        (["vnncomp", str(tmp / "missing.csv"), "--out", out], "missing.csv"),
        (["certify-pointcloud", "--transform", "spin-z", "--out", out], "unknown transformation 'spin-z'"),
        (["certify-pointcloud", "--objects", "0", "--out", out], "--objects must be >= 1"),
        (["certify-pointcloud", "--method", "magic", "--out", out], "unknown method 'magic'"),
        (["bench", "tightness", "--methods", "ibp,magic", "--out", out], r"unknown \['magic'\]"),
        (["bench", "training", "--group", "0", "--out", out], "--group must be >= 1"),
        (["--threads", "0", "bench", "training", "--out", out], "--threads must be >= 1"),
        ([], "the following arguments are required: command"),
    ]


@pytest.mark.parametrize("case", range(15))
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
    argv = ["train", "--epochs", "1", "--samples", "200", "--hidden", "4", "--out", str(out), "-q"]
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
