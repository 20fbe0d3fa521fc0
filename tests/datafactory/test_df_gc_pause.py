"""gc_pause: a generation's block freezes what exists and raises the young threshold, and leaves the
process's collector as it found it; freeze_now acts only inside a block."""
from __future__ import annotations

import gc

from datafactory.gc_pause import YOUNG_THRESHOLD, fewer_collections, freeze_now


def test_block_freezes_and_restores():
    before_threshold, before_frozen = gc.get_threshold(), gc.get_freeze_count()
    freeze_now()  # outside a block: nothing
    assert gc.get_freeze_count() == before_frozen
    with fewer_collections():
        assert gc.get_freeze_count() > before_frozen
        assert gc.get_threshold()[0] == max(before_threshold[0], YOUNG_THRESHOLD)
        with fewer_collections():  # nested (a library caller inside a run): the outer block restores
            late = [object() for _ in range(10)]  # noqa: F841
        assert gc.get_threshold()[0] == max(before_threshold[0], YOUNG_THRESHOLD)
        freeze_now()
    assert gc.get_threshold() == before_threshold and gc.get_freeze_count() == before_frozen


def test_cyclic_garbage_made_in_a_block_is_still_collected():
    import weakref

    class Node:
        pass

    with fewer_collections():
        node = Node()
        node.self = node
        ref = weakref.ref(node)
        del node
        gc.collect()
        assert ref() is None
