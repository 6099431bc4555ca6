"""The documentation's examples run as printed, and the site (with the API reference generated
from the docstrings) builds without warnings or broken links."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.docs import ROOT, python_blocks


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


# (file, slow): the heavy pages (solver and point-cloud training) run with `make test-slow`;
# guide.md and pointcloud.md also run in-process above (solvers.md: its training API is tested in test_mibp.py)
DOC_PAGES = [
    ("README.md", False),
    ("docs/interval.md", False),
    ("docs/linear.md", False),
    ("docs/solvers.md", True),  # a 2-epoch LP training on 2 spawned workers: 25-40 s
    ("docs/training.md", False),
    ("docs/verify.md", False),
    ("docs/guide.md", True),
    ("docs/pointcloud.md", True),
]


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if slow else p for p, slow in DOC_PAGES])
def test_doc_blocks_run_as_a_saved_script(page, tmp_path):
    """A page's Python blocks, in order, saved as one script and run in a fresh interpreter from
    an empty folder, as a reader who copies them would (spawned worker processes included)."""
    blocks = python_blocks(ROOT / page)
    assert blocks, f"{page} has no python block"
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks))
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, f"{page} as a script failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def test_every_page_with_python_blocks_is_run():
    pages = {str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    with_code = {p for p in pages if python_blocks(ROOT / p)}
    assert with_code == {p for p, _ in DOC_PAGES}
