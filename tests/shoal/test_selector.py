"""Label selectors as `--constraints` and `labels=` take them."""

from __future__ import annotations

import pytest

from shoal.errors import SpecError
from shoal.selector import parse_selector


def test_every_form() -> None:
    assert parse_selector("region=eu, gpu!=none,zone in (a, b),tier notin (x),ssd,!spot,cores>4,mem<64,k==v") == [
        {"Key": "region", "Operator": "=", "Values": ["eu"]},
        {"Key": "gpu", "Operator": "!=", "Values": ["none"]},
        {"Key": "zone", "Operator": "in", "Values": ["a", "b"]},
        {"Key": "tier", "Operator": "notin", "Values": ["x"]},
        {"Key": "ssd", "Operator": "exists", "Values": []},
        {"Key": "spot", "Operator": "!", "Values": []},
        {"Key": "cores", "Operator": "gt", "Values": ["4"]},
        {"Key": "mem", "Operator": "lt", "Values": ["64"]},
        {"Key": "k", "Operator": "==", "Values": ["v"]},
    ]
    assert parse_selector("") == []


@pytest.mark.parametrize("text", ["zone in ()", "a b", "=x", "k=v=w"])
def test_nonsense_names_the_field(text: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_selector(text, "--constraints")
    assert raised.value.field == "--constraints"
