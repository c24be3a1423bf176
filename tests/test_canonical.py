"""The canonical form an argument digest is made of, attacked: numbers past 64 bits, negative zero, non-finite and
deep values, type confusion; and the digests of values that already had one stay exactly as they were (previews
issued before the fix still confirm)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.canonical import MAX_DEPTH, NotCanonical, digest


@pytest.mark.parametrize(("value", "pinned"), [
    ({"a": 1, "b": {"x": 2.0, "y": [1.0, "z"]}}, "96068983e15d57995d23fb64aa2a4ea2f2261f865c758e67182a2a767b3de84d"),
    ({"amount": 12.5, "n": -0.0, "big": 1e19, "neg": -9.2e18, "s": "é", "t": True, "u": None},
     "b646a65ae508b66008759fe4d601b83c351143fba304694567c0e360c804b846"),
    ({"nested": [[[{"k": [1, 2.25]}]]]}, "2d38a322384571381eb7e447c2e94d77b03f756233c85d940d1eb509526070c4"),
])
def test_digests_that_existed_are_unchanged(value: dict, pinned: str) -> None:
    assert digest(value) == pinned  # pinned with the canonical form before the fix


def test_one_number_one_digest() -> None:
    wire = orjson.loads(b'{"a": 100000000000000000000}')  # orjson reads a literal past 64 bits as a double
    assert digest({"a": 1e20}) == digest(wire) == digest({"a": 10**20}) == digest({"a": 1.0e20})
    assert digest({"a": -0.0}) == digest({"a": 0}) == digest({"a": 0.0})
    assert digest({"a": 2**64 - 1}) == digest({"a": 18446744073709551615})
    assert digest({"a": 2**64}) == digest({"a": float(2**64)})  # past 64 bits: the double it equals
    assert digest({"a": 1e20}) != digest({"a": 1.0000000000000002e20})  # the next double is another amount
    assert digest({"a": -(2**63)}) != digest({"a": -(2**63) - 2048})
    assert digest({"a": 1e300}) != digest({"a": 1e299})


@pytest.mark.parametrize(("left", "right"), [
    ({"a": 1}, {"a": "1"}), ({"a": 1}, {"a": True}), ({"a": 0}, {"a": False}), ({"a": None}, {"a": "null"}),
    ({"a": []}, {"a": {}}), ({"a": [1, 2]}, {"a": [2, 1]}), ({"a": {"b": 1}}, {"a.b": 1}),
    ({"a": 1e20}, {"a": "1e+20"}),
])
def test_different_values_differ(left: dict, right: dict) -> None:
    assert digest(left) != digest(right)


@pytest.mark.parametrize("value", [
    float("nan"), float("inf"), -float("inf"),  # orjson would write each as null: {"a": NaN} would be {"a": null}
    10**20 + 1,  # no JSON double holds it: rounding it would bind a preview to another amount
    10**400,
    {1: "x"}, object(), b"bytes",
])
def test_what_has_no_canonical_form_is_refused_not_guessed(value: Any) -> None:
    with pytest.raises(NotCanonical):
        digest({"a": value})


def test_deep_values() -> None:
    def nest(depth: int) -> Any:
        value: Any = 1
        for _ in range(depth):
            value = [value]
        return value

    assert digest({"a": nest(MAX_DEPTH - 2)})  # as deep as orjson can write
    with pytest.raises(NotCanonical):
        digest({"a": nest(MAX_DEPTH + 10)})
    with pytest.raises(NotCanonical):
        digest({"a": nest(5000)})  # not a RecursionError: a refusal with a reason
