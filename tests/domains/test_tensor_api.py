"""The IntervalTensor API: constructors, properties, contains, repr, errors, serialisation."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import boundflow as bf
from boundflow import IntervalTensor


def test_constructors_and_properties():
    lo, hi = torch.tensor([0.0, -1.0]), torch.tensor([1.0, 3.0])
    t = IntervalTensor(lo, hi)
    assert torch.equal(t.lower, lo) and torch.equal(t.upper, hi)
    assert torch.equal(t.center, torch.tensor([0.5, 1.0]))
    assert torch.equal(t.radius, torch.tensor([0.5, 2.0]))
    assert torch.equal(t.width, torch.tensor([1.0, 4.0]))
    assert t.shape == (2,) and t.dtype == torch.float32

    c = IntervalTensor.from_center_radius(torch.tensor([1.0, 2.0]), 0.5)
    assert torch.equal(c.lower, torch.tensor([0.5, 1.5])) and torch.equal(c.upper, torch.tensor([1.5, 2.5]))

    e = IntervalTensor.from_eps(torch.tensor([0.05, 0.5, 0.98]), 0.1, clamp=(0.0, 1.0))
    torch.testing.assert_close(e.lower, torch.tensor([0.0, 0.4, 0.88]))
    torch.testing.assert_close(e.upper, torch.tensor([0.15, 0.6, 1.0]))

    z = IntervalTensor.exact(torch.ones(3))
    assert z.is_exact() and not t.is_exact()
    r = IntervalTensor(lo, hi, requires_grad=True)
    assert r.requires_grad and not r.lower.requires_grad


def test_contains():
    t = IntervalTensor(torch.tensor([0.0, -1.0]), torch.tensor([1.0, 3.0]))
    assert t.contains(torch.tensor([0.5, 3.0]))
    assert not t.contains(torch.tensor([1.5, 0.0]))
    assert t.contains(torch.tensor([1.05, 0.0]), atol=0.1)
    assert torch.equal(t.contains(torch.tensor([1.5, 0.0]), elementwise=True), torch.tensor([False, True]))
    assert t.contains(IntervalTensor(torch.tensor([0.2, 0.0]), torch.tensor([0.8, 1.0])))
    with pytest.raises(ValueError, match=r"shape \(3,\) does not broadcast"):
        t.contains(torch.zeros(3))


def test_validation_errors_name_count_and_place():
    with pytest.raises(ValueError, match=r"lower > upper in 2 of 3 entries \(first at index \(0,\)\)"):
        IntervalTensor(torch.tensor([1.0, 0.0, 5.0]), torch.tensor([0.0, 1.0, 4.0]))
    with pytest.raises(ValueError, match=r"lower contains NaN in 1 of 2 entries \(first at index \(1,\)\)"):
        IntervalTensor(torch.tensor([0.0, float("nan")]), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match=r"upper contains inf in 1 of 2"):
        IntervalTensor(torch.tensor([0.0, 0.0]), torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match=r"lower has shape \(2,\) but upper has shape \(3,\)"):
        IntervalTensor(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="radius must be non-negative"):
        IntervalTensor.from_center_radius(torch.zeros(2), torch.tensor([0.1, -0.1]))
    with pytest.raises(ValueError, match="eps must be non-negative"):
        IntervalTensor.from_eps(torch.zeros(2), -0.1)


def test_shape_mismatch_in_an_op_names_the_op_and_shapes():
    a = IntervalTensor(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(bf.IntervalOpError, match=r"aten.mm.default failed on operands \(IntervalTensor\(2, 3\)"):
        a @ torch.zeros(4, 5)


def test_unsupported_op_names_the_op_and_the_caller():
    x = IntervalTensor(torch.zeros(3), torch.ones(3))
    with pytest.raises(bf.UnsupportedOperation) as info:
        torch.cumprod(x, 0)
    msg = str(info.value)
    assert "no interval rule for aten.cumprod.default" in msg
    assert "test_tensor_api.py" in msg and "implements(" in msg


def test_unsupported_op_inside_a_module_names_the_module():
    class Weird(nn.Module):
        def forward(self, x):
            return torch.cumprod(x, 0)

    model = nn.Sequential(nn.Linear(3, 3), Weird())
    with pytest.raises(bf.UnsupportedOperation, match=r"module Sequential > Weird"):
        bf.compute_bounds(model, torch.zeros(2, 3), torch.ones(2, 3))


def test_domain_errors():
    x = IntervalTensor(torch.tensor([-0.5, 1.0]), torch.tensor([0.5, 2.0]))
    with pytest.raises(bf.DomainError, match=r"sqrt\(x\) needs x >= 0.*1 of 2 entries"):
        torch.sqrt(x)
    with pytest.raises(bf.DomainError, match="log"):
        torch.log(x)
    with pytest.raises(bf.DomainError, match=r"pow\(x, 0.5\)"):
        x**0.5
    with pytest.raises(bf.DomainError, match="must be exact"):
        x[x > 0.2]
    with pytest.raises(bf.DomainError, match="not determined"):
        x.sum().item()
    with pytest.raises(bf.DomainError, match="not determined"):
        bool((x > 0).all())


def test_division_by_interval_containing_zero_is_the_whole_line():
    x = IntervalTensor(torch.tensor([1.0]), torch.tensor([2.0]))
    y = IntervalTensor(torch.tensor([-1.0]), torch.tensor([1.0]))
    r = x / y
    assert r.lower.item() == -float("inf") and r.upper.item() == float("inf")


def test_batchnorm_training_mode_is_refused():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(bf.UnsupportedOperation, match=r"BatchNorm in training mode.*model.eval\(\)"):
        bn(IntervalTensor(torch.zeros(4, 3), torch.ones(4, 3)))


def test_dropout_in_training_mode_is_refused():
    x = IntervalTensor(torch.zeros(4, 3), torch.ones(4, 3))
    with pytest.raises(bf.UnsupportedOperation, match=r"Dropout in training mode.*model.eval\(\)"):
        nn.Dropout(0.5).train()(x)
    y = nn.Dropout(0.5).eval()(x)
    assert torch.equal(y.lower, x.lower) and torch.equal(y.upper, x.upper)


def test_unknown_methods_raise_clear_errors():
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="unknown method 'foo'"):
        bf.compute_bounds(model, torch.zeros(1, 2), torch.ones(1, 2), method="foo")
    with pytest.raises(ValueError, match="lower > upper"):
        bf.compute_bounds(model, torch.ones(1, 2), torch.zeros(1, 2))


def test_repr_is_readable():
    t = IntervalTensor(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 2.0]), requires_grad=True)
    s = repr(t)
    assert s.startswith("IntervalTensor(shape=(2,), dtype=torch.float32, requires_grad=True")
    assert "[0, 0.5]" in s and "[1, 2]" in s
    big = IntervalTensor(torch.zeros(10, 10), torch.ones(10, 10))
    assert "width mean 1" in repr(big)
    assert f"{t}" == repr(t)


def test_item_equal_and_same_size_on_exact_intervals():
    e = IntervalTensor.exact(torch.tensor(2.5))
    assert e.item() == 2.5
    a = IntervalTensor(torch.zeros(2), torch.ones(2))
    assert torch.equal(a, IntervalTensor(torch.zeros(2), torch.ones(2)))
    assert not torch.equal(a, IntervalTensor(torch.zeros(2), torch.full((2,), 2.0)))
    assert torch.ops.aten.is_same_size.default(a, IntervalTensor(torch.zeros(2), torch.ones(2)))


def test_pickle_torch_save_and_deepcopy_round_trip():
    t = IntervalTensor(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 2.0]), requires_grad=True)
    for clone in (pickle.loads(pickle.dumps(t)), copy.deepcopy(t)):
        assert isinstance(clone, IntervalTensor)
        assert torch.equal(clone.lower, t.lower) and torch.equal(clone.upper, t.upper)
        assert clone.requires_grad
    buf = io.BytesIO()
    torch.save({"p": t}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)["p"]
    assert isinstance(loaded, IntervalTensor) and torch.equal(loaded.upper, t.upper)


def test_inplace_ops_update_the_interval():
    t = IntervalTensor(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 2.0]))
    same = t.mul_(2.0).add_(IntervalTensor(torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 0.0])))
    assert same is t
    assert torch.equal(t.lower, torch.tensor([-1.0, 2.0])) and torch.equal(t.upper, torch.tensor([2.0, 4.0]))
    plain = torch.zeros(2)
    with pytest.raises(bf.UnsupportedOperation, match="plain tensor cannot hold it"):
        plain.add_(IntervalTensor(torch.zeros(2), torch.ones(2)))


def test_max_and_argmax_report_index_intervals():
    x = IntervalTensor(
        torch.tensor([[0.0, 5.0, 1.0], [0.0, 1.0, 0.5]]), torch.tensor([[1.0, 6.0, 2.0], [2.0, 3.0, 0.7]])
    )
    values, idx = torch.max(x, dim=1)
    assert torch.equal(values.lower, torch.tensor([5.0, 1.0])) and torch.equal(values.upper, torch.tensor([6.0, 3.0]))
    assert torch.equal(idx.lower, torch.tensor([1, 0])) and torch.equal(idx.upper, torch.tensor([1, 1]))
    am = x.argmax(1)
    assert torch.equal(am.lower, idx.lower) and torch.equal(am.upper, idx.upper)


@pytest.mark.parametrize(
    "lo_dtype,hi_dtype", [(torch.float32, torch.float64), (torch.float64, torch.float32), (torch.int64, torch.float32)]
)
def test_mixed_dtypes_promote_and_never_round_a_bound_inwards(lo_dtype, hi_dtype):
    """The interval built from bounds of two dtypes contains the given one (compared in
    float64, which holds both exactly): a value the promoted dtype cannot hold steps outwards."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(200, generator=g, dtype=torch.float64) * 10
    if lo_dtype == torch.int64:  # integers a float32 cannot hold
        base = torch.cat([base.round(), torch.tensor([2.0**40 + 1, -(2.0**40) - 3])])
    lo = base.to(lo_dtype)
    hi = (lo.double() + 2.0**20 * (lo_dtype == torch.int64) + torch.rand(len(base), generator=g)).to(hi_dtype)
    assert bool((hi.double() >= lo.double()).all())
    t = bf.IntervalTensor(lo, hi)
    assert t.dtype == torch.promote_types(lo_dtype, hi_dtype)
    assert bool((t.lower.double() <= lo.double()).all()) and bool((t.upper.double() >= hi.double()).all())


def test_python_numbers_are_held_exactly():
    x = bf.IntervalTensor(0.1)  # 0.1 is no float32: its interval has width
    assert x.lower.item() <= 0.1 <= x.upper.item() and x.lower.item() < x.upper.item()
    y = bf.IntervalTensor(torch.tensor(0.0, dtype=torch.float32), 0.1)
    assert y.dtype == torch.float32 and y.upper.item() >= 0.1


def test_narrowing_a_bound_steps_outwards():
    lo = torch.tensor([0.1, -0.3, 1.0 / 3.0], dtype=torch.float64)
    hi = torch.tensor([0.2, 0.7, 0.5], dtype=torch.float64)
    t = bf.IntervalTensor(lo.float(), hi)  # float32 lower, float64 upper -> float64
    assert t.dtype == torch.float64 and bool((t.lower <= lo.float().double()).all())
    from boundflow.domains.interval.tensor import _convert

    down, up = _convert(lo, torch.float32, -1), _convert(hi, torch.float32, 1)
    assert bool((down.double() <= lo).all()) and bool((up.double() >= hi).all())


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
def test_compute_bounds_names_infinite_boxes_and_nan_weights(method):
    import math

    from boundflow.errors import DomainError

    m = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    x = torch.zeros(1, 2, dtype=torch.float64)
    with pytest.raises(DomainError, match="x_upper contains inf"):
        bf.compute_bounds(m, x, x + math.inf, method=method)
    m[0].weight.data[0, 0] = float("nan")
    with pytest.raises(DomainError, match="'0.weight' contains NaN"):
        bf.compute_bounds(m, x, x + 1, method=method)
