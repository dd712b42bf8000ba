"""`tune_gc_for_serving`: what start-up left as garbage is collected, what is alive is frozen,
and the thresholds are the serving ones.

Run in a process of its own: freezing the test process would keep every object alive in it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from nvcf_sidecar.heap import SERVING_THRESHOLDS

_SCRIPT = textwrap.dedent(
    """
    import gc, json, weakref
    from nvcf_sidecar.heap import tune_gc_for_serving

    class Node:
        pass

    garbage = Node()
    garbage.me = garbage  # a cycle: only the collector frees it
    gone = weakref.ref(garbage)
    del garbage
    kept = Node()
    kept.me = kept
    before = gc.get_freeze_count()
    frozen = tune_gc_for_serving()
    later = Node()
    print(json.dumps({
        "before": before,
        "frozen": frozen,
        "count": gc.get_freeze_count(),
        "collected": gone() is None,
        "kept_walked": any(o is kept for o in gc.get_objects()),
        "later_walked": any(o is later for o in gc.get_objects()),
        "thresholds": gc.get_threshold(),
    }))
    """
)


def test_start_up_garbage_is_collected_and_the_living_are_frozen() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    figures = json.loads(done.stdout)
    assert figures["before"] == 0
    assert figures["collected"] is True  # the cycle made before was freed, not frozen
    assert figures["frozen"] == figures["count"] > 1_000  # the modules, classes, functions
    assert figures["kept_walked"] is False  # alive at start-up: no collection walks it
    assert figures["later_walked"] is True  # made while serving: collected as before
    assert tuple(figures["thresholds"]) == SERVING_THRESHOLDS
