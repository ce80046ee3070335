"""What a process has when it started is left out of later collections; what it makes
afterwards is still collected."""

from __future__ import annotations

import gc
import weakref

from orchestrator import heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_the_startup_heap_is_left_out_of_collections_and_later_garbage_is_not() -> None:
    gc.collect()
    before = Node()
    seen_before = weakref.ref(before)
    heap.freeze_startup_heap()
    try:
        after = Node()
        seen_after = weakref.ref(after)
        del before, after
        gc.collect()
        assert seen_before() is not None  # frozen: never walked, never freed
        assert seen_after() is None
    finally:
        gc.unfreeze()
