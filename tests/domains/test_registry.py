"""The method registry (:mod:`boundflow.domains.registry`): names with options become configured
domains, bad names and options fail with one line before any work, and a configured domain
bounds exactly as the same domain built by hand."""

from __future__ import annotations

import pytest
import torch

import boundflow as bf
from boundflow.domains.base import BranchingPrepared
from boundflow.domains.linear import AlphaCrownDomain, CrownDomain, ForwardDomain
from boundflow.domains.registry import DOMAINS, METHOD_OPTIONS, get_domain, method_names, parse_method


def test_plain_names_are_the_shared_instances_and_aliases_resolve():
    for name in ("ibp", "crown", "alpha-crown", "forward"):
        assert parse_method(name) is DOMAINS[name]
    assert parse_method("interval") is DOMAINS["ibp"]
    assert get_domain(" crown ") is DOMAINS["crown"]
    dom = CrownDomain("tight")
    assert get_domain(dom) is dom


def test_options_configure_a_new_instance():
    d = parse_method("crown:maxpool=tight:sparse=false")
    assert isinstance(d, CrownDomain) and d is not DOMAINS["crown"]
    assert (d.maxpool, d.sparse) == ("tight", False)
    a = parse_method("alpha-crown:iters=50:lr=0.2:sides=lower:intermediate=3:share=0.5")
    assert isinstance(a, AlphaCrownDomain)
    assert (a.iterations, a.lr, a.sides, a.intermediate, a.intermediate_share) == (50, 0.2, ("lower",), 3, 0.5)
    assert parse_method("alpha-crown:sides=both").sides == ("lower", "upper")
    f = parse_method("forward:maxpool=tight")
    assert isinstance(f, ForwardDomain) and f.maxpool == "tight"
    assert parse_method("crown-tight").maxpool == "tight"
    s = parse_method("milp:time_limit=2.5")
    assert (s.name, s.time_limit) == ("milp", 2.5)
    # the defaults are the shared instance's
    assert parse_method("crown:sparse=true").maxpool == DOMAINS["crown"].maxpool


@pytest.mark.parametrize(
    "text, message",
    [
        ("magic", "unknown method 'magic'"),
        ("crown:iters=5", "unknown option 'iters'; crown takes: maxpool, sparse"),
        ("ibp:maxpool=tight", "ibp takes: none"),
        ("crown:maxpool=best", "option maxpool='best': choose from deeppoly, tight"),
        ("crown:maxpool", "option 'maxpool' needs a value"),
        ("crown:maxpool=", "option 'maxpool' needs a value"),
        ("alpha-crown:iters=-1", "must be >= 0"),
        ("alpha-crown:iters=2.5", "iters='2.5'"),
        ("alpha-crown:lr=0", "must be > 0"),
        ("alpha-crown:share=1.5", "must be in (0, 1]"),
        ("alpha-crown:sides=left", "choose from lower, upper, both"),
        ("crown:sparse=maybe", "true or false"),
        ("lp:time_limit=-1", "must be > 0"),
        ("crown:maxpool=tight:maxpool=deeppoly", "option 'maxpool' given twice"),
    ],
)
def test_bad_names_and_options_are_one_line_errors(text, message):
    with pytest.raises(ValueError) as err:
        parse_method(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_option_is_a_keyword_of_its_domain():
    """Each option's keyword is accepted by the domain's constructor (a renamed keyword fails)."""
    import inspect

    for name, opts in METHOD_OPTIONS.items():
        domain = parse_method(name)
        keywords = inspect.signature(type(domain).__init__).parameters
        for key, opt in opts.items():
            assert opt.keyword in keywords, (name, key, opt.keyword)


def test_method_lists_check_every_name():
    assert method_names("interval, crown:maxpool=tight", ("ibp", "crown")) == ["ibp", "crown:maxpool=tight"]
    assert method_names("crown-tight", ("crown", "crown-tight")) == ["crown-tight"]
    with pytest.raises(ValueError, match="--methods: unknown 'deeppoly'"):
        method_names("ibp,deeppoly", ("ibp", "crown"), "--methods")
    with pytest.raises(ValueError, match="unknown option"):
        method_names("crown:iters=3", ("crown",))
    with pytest.raises(ValueError, match="no method"):
        method_names(" , ", ("crown",))


def _cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 3)
    ).double()


@pytest.mark.parametrize(
    "text, by_hand",
    [
        ("crown:maxpool=tight", lambda: CrownDomain("tight")),
        ("crown:sparse=false", lambda: CrownDomain(sparse=False)),
        ("forward:maxpool=tight", lambda: ForwardDomain("tight")),
        ("alpha-crown:iters=5:sides=lower", lambda: AlphaCrownDomain(iterations=5, sides=("lower",))),
    ],
)
def test_a_configured_domain_bounds_as_the_one_built_by_hand_and_contains_samples(text, by_hand):
    model = _cnn()
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    lo, hi = x - 0.05, x + 0.05
    got_lo, got_hi = bf.compute_bounds(model, lo, hi, method=text)
    ref_lo, ref_hi = bf.compute_bounds(model, lo, hi, method=by_hand())
    assert torch.equal(got_lo, ref_lo) and torch.equal(got_hi, ref_hi)
    with torch.no_grad():
        for _ in range(20):
            y = model(lo + (hi - lo) * torch.rand_like(lo))
            assert (got_lo <= y + 1e-12).all() and (y <= got_hi + 1e-12).all()


def test_composed_domains_are_no_longer_crown_subclasses_and_the_linear_prepared_model_branches():
    assert not issubclass(AlphaCrownDomain, CrownDomain) and not issubclass(ForwardDomain, CrownDomain)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    for name in ("crown", "alpha-crown"):
        assert isinstance(bf.get_domain(name).prepare(model), BranchingPrepared)
    assert not isinstance(bf.get_domain("ibp").prepare(model), BranchingPrepared)
