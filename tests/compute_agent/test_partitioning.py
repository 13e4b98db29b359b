"""S3 partitioning (compute_agent/partitioning.py) against Bacalhau's published hash and expectations."""

from __future__ import annotations

import pytest

from compute_agent.partitioning import fnv1a_32, select

KEYS = ["set1/001.txt", "set1/002.txt", "set1/101.txt", "set1/102.txt"]


def test_fnv1a_matches_the_reference_vectors() -> None:
    assert fnv1a_32("") == 0x811C9DC5
    assert fnv1a_32("a") == 0xE40C292C
    assert fnv1a_32("foobar") == 0xBF9CF968


@pytest.mark.parametrize(("partition", "index", "expected"), [
    ({"Type": "substring", "StartIndex": 2, "EndIndex": 3}, 0, ["set1/001.txt", "set1/101.txt"]),
    ({"Type": "substring", "StartIndex": 2, "EndIndex": 3}, 1, ["set1/002.txt", "set1/102.txt"]),
    ({"Type": "regex", "Pattern": r"\d0"}, 0, ["set1/101.txt", "set1/102.txt"]),
    ({"Type": "regex", "Pattern": r"\d0"}, 1, ["set1/001.txt", "set1/002.txt"]),
])
def test_bacalhaus_expected_shares(partition: dict[str, object], index: int, expected: list[str]) -> None:
    assert select(KEYS, count=2, index=index, prefix="set1/", partition=partition) == expected


def test_object_partitioning_hashes_the_whole_key() -> None:
    shares = [select(KEYS, count=3, index=i, prefix="set1/", partition={"Type": "object"}) for i in range(3)]
    assert sorted(k for share in shares for k in share) == KEYS
    for i, share in enumerate(shares):
        assert all(fnv1a_32(key) % 3 == i for key in share)


@pytest.mark.parametrize("partition", [
    {"Type": "substring", "StartIndex": 0, "EndIndex": 6},  # "short" has 5 characters
    {"Type": "date", "DateFormat": "2006-01-02"},  # "short" is no date
    {"Type": "regex", "Pattern": r"\d+"},  # "short" has no digit
])
def test_keys_a_rule_cannot_read_go_to_partition_zero(partition: dict[str, object]) -> None:
    shares = [select(["x/short"], count=4, index=i, prefix="x/", partition=partition) for i in range(4)]
    assert shares == [["x/short"], [], [], []]


def test_date_partitioning_keeps_a_day_together() -> None:
    keys = [f"logs/2024-03-{day:02d}-{part}.log" for day in range(1, 11) for part in "ab"]
    shares = [select(keys, count=3, index=i, prefix="logs/", partition={"Type": "date", "DateFormat": "2006-01-02"})
              for i in range(3)]
    assert sorted(k for share in shares for k in share) == sorted(keys)
    for i, share in enumerate(shares):
        assert all(fnv1a_32(key[5:15]) % 3 == i for key in share)


def test_one_partition_or_type_none_sees_everything() -> None:
    assert select(KEYS, count=1, index=0, prefix="", partition={"Type": "object"}) == KEYS
    assert select(KEYS, count=5, index=3, prefix="", partition={}) == KEYS
