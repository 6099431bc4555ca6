"""Every domain runs on the device of the tensors it is given: no tensor in the bounding code is
created on the default (CPU) device when an input tells which device to use.  CI has no GPU,
so this checks the source: each tensor factory call in the domains, specs and API names a
``device`` (or copies one with ``*_like``), except for host-side scalars that are read back
at once (``.item()``, ``.tolist()``).  ``benchmarks/device_check.py`` runs the domains on CUDA
where a GPU exists."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "boundflow"
# (torch.as_tensor keeps a tensor's device, and a Python scalar it makes broadcasts onto any device)
FACTORIES = {"zeros", "ones", "eye", "empty", "full", "arange", "rand", "randn", "tensor", "linspace"}
CHECKED = [*sorted((ROOT / "domains").rglob("*.py")), ROOT / "specs.py", ROOT / "bounds.py", ROOT / "api.py"]


def _device_less_factories(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        f = node.func
        if not (isinstance(f.value, ast.Name) and f.value.id == "torch" and f.attr in FACTORIES):
            continue
        if any(k.arg == "device" for k in node.keywords):
            continue
        up = parents.get(node)
        if isinstance(up, ast.Attribute) and up.attr in ("item", "tolist"):
            continue  # a host-side scalar, read back at once
        found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} torch.{f.attr}")
    return found


def test_bounding_code_creates_tensors_on_the_inputs_device():
    assert len(CHECKED) > 20
    offenders = [hit for path in CHECKED for hit in _device_less_factories(path)]
    assert offenders == [], "\n".join(offenders)


def test_the_check_finds_a_device_less_factory(tmp_path):
    bad = tmp_path / "bad.py"
    lines = ["import torch", "x = torch.zeros(3)", "y = torch.zeros(3, device=x.device)", "z = torch.tensor(2.).item()"]
    bad.write_text("\n".join(lines) + "\n")
    import tests.domains.test_device_agnostic as me

    old, me.ROOT = me.ROOT, tmp_path
    try:
        assert _device_less_factories(bad) == [f"{tmp_path.name}/bad.py:2 torch.zeros"]
    finally:
        me.ROOT = old
