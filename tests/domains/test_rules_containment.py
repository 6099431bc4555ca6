"""Every rule: hypothesis-generated shapes and intervals; at least 200 concrete points per case
(both all-lower/all-upper corners, random corners, random interior points, sign-gradient
attacks); forward values and gradients must lie inside the interval results."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.cases import CASES
from tests.support.containment import check_containment

EXAMPLES = 12


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(data=st.data())
def test_containment(name, data):
    fn, args = CASES[name](data.draw)
    report = check_containment(fn, args, n_corners=40, n_random=150, attack_steps=8)
    assert report.samples >= 200
