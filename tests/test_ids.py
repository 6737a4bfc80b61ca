"""Ids: prefixed, 26 Crockford base32 digits, in the order they were made."""

from __future__ import annotations

import pytest

from shared.ids import base32, new_id


@pytest.mark.parametrize(
    ("value", "digits"),
    [
        (0, "0" * 26),
        (1, "0" * 25 + "1"),
        (31, "0" * 25 + "z"),
        (32, "0" * 24 + "10"),
        (2**128 - 1, "7" + "z" * 25),
    ],
)
def test_values_are_written_in_crockford_base32(value: int, digits: str) -> None:
    assert base32(value) == digits


def test_ids_carry_their_prefix_and_sort_in_the_order_they_were_made() -> None:
    ids = [new_id("msg") for _ in range(10_000)]
    assert all(i.startswith("msg_") and len(i) == 30 for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
