"""The documentation's examples run as printed, and the site (with the API reference generated
from the docstrings) builds without warnings or broken links."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_guide_examples_run(tmp_path, monkeypatch, capsys):
    """Every Python block of the user guide, in order, in one namespace (as a reader would)."""
    blocks = python_blocks(ROOT / "docs" / "guide.md")
    assert len(blocks) >= 7
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__guide__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"docs/guide.md block {i + 1}", "exec"), ns)
        except Exception as e:  # name the block that failed
            raise AssertionError(f"docs/guide.md python block {i + 1} failed: {e!r}") from e
    out = capsys.readouterr().out
    assert "certified accuracy" in out and "mean gap" in out and "clouds certified" in out


def test_pointcloud_guide_example_runs(tmp_path, monkeypatch):
    (code,) = python_blocks(ROOT / "docs" / "pointcloud.md")[:1]
    code = code.replace("n_per_class=100", "n_per_class=10").replace("make_shapes(4,", "make_shapes(1,")
    code = code.replace("splits=10", "splits=1")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/pointcloud.md block 1", "exec"), {"__name__": "__doc__"})


MKDOCS = shutil.which("mkdocs", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(MKDOCS is None, reason="mkdocs not installed (pip install -e '.[docs]')")
def test_docs_site_builds_strictly(tmp_path):
    mkdocs = MKDOCS
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [mkdocs, "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    # the reference is generated from the docstrings, not written by hand
    assert "never looser than" in api and "taylor_bounds" in api and "check_consistency" in api
