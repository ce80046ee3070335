"""Job ids: a fixed format that sorts by creation time."""

from __future__ import annotations

import re
import time

import pytest

from orchestrator.ids import looks_like_job_id, new_job_id

ID_FORMAT = re.compile(r"^job_[0-9a-f]{28}$")


def test_format() -> None:
    for _ in range(100):
        job_id = new_job_id()
        assert ID_FORMAT.match(job_id), job_id
        assert len(job_id) <= 40  # the width of the id columns


def test_the_time_part_is_the_creation_time_in_milliseconds() -> None:
    before = int(time.time() * 1000)
    job_id = new_job_id()
    after = int(time.time() * 1000)
    assert before <= int(job_id[4:16], 16) <= after
    assert int(new_job_id(now_ms=1_700_000_000_123)[4:16], 16) == 1_700_000_000_123


@pytest.mark.parametrize(
    "moments",
    [
        [1, 2, 3, 10, 16, 255, 256, 4095, 4096],
        [1_700_000_000_000 + step for step in (0, 1, 15, 16, 999, 1000, 86_400_000)],
        [0, 2**47 - 1],
    ],
)
def test_ids_sort_by_creation_time(moments: list[int]) -> None:
    ids = [new_job_id(now_ms=ms) for ms in moments]
    assert sorted(ids) == ids
    # Also as the database compares them: plain string order, the reverse for newest first.
    assert sorted(ids, reverse=True) == ids[::-1]


def test_ids_are_sortable_regardless_of_the_random_part() -> None:
    for _ in range(200):
        assert new_job_id(now_ms=1_000) < new_job_id(now_ms=1_001)


def test_ids_made_in_the_same_millisecond_are_unique() -> None:
    ids = {new_job_id(now_ms=42) for _ in range(20_000)}
    assert len(ids) == 20_000


def test_new_ids_look_like_job_ids() -> None:
    assert looks_like_job_id(new_job_id())
    assert looks_like_job_id(new_job_id(now_ms=0))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "job_",
        "job",
        "JOB_" + "a" * 28,
        "task_" + "a" * 28,
        "a" * 32,
        "job_" + "a" * 27,
        "job_" + "a" * 29,
        "job_" + "g" * 28,
        "job_" + "a" * 27 + "z",
        "job_job_" + "a" * 24,
        " job_" + "a" * 28,
    ],
)
def test_looks_like_job_id_rejects(value: str) -> None:
    assert not looks_like_job_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "job_-" + "a" * 27,
        "job_+" + "a" * 27,
        "job_0x" + "a" * 26,
        "job_" + "a" * 13 + "_" + "a" * 14,
        "job_ " + "a" * 27,
        "job_" + "a" * 27 + "\n",
    ],
)
def test_looks_like_job_id_rejects_non_hex_bodies_that_int_accepts(value: str) -> None:
    assert not looks_like_job_id(value)


def test_ids_from_one_process_sort_in_creation_order() -> None:
    ids = [new_job_id() for _ in range(5000)]  # many share a millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
