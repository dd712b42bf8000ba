"""The garbage collector of a long-running server process, once it has started.

CPython's cyclic collector walks every container object of a generation when it collects that
generation. Its oldest generation holds what start-up made: the imported modules, their
classes and functions, the configuration, the clients. None of that becomes garbage while the
process serves, yet each full collection walks all of it again. And with CPython's default
thresholds the youngest generation is collected every 700 new container objects, a few
requests' worth, so objects that live through a request are walked again and again as they
are promoted.

`tune_gc_for_serving` collects what start-up left behind, moves everything alive into the
collector's permanent generation (`gc.freeze()`), which no collection walks, and collects the
youngest generation every `SERVING_THRESHOLDS[0]` new container objects instead. Objects made
afterwards, the requests', are collected as before, only in larger batches: in `bench
hotpath`'s profile the collector's share of the sidecar's CPU fell from 3.5 % to none
(docs/performance.md, "The garbage collector").

The sidecar and the platform call it once, when they begin to serve.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["SERVING_THRESHOLDS", "tune_gc_for_serving"]

SERVING_THRESHOLDS: Final = (7_000, 20, 20)
"""`gc.set_threshold` while serving: the youngest generation every 7,000 new container objects
(CPython's default: 700), each older one every 20 collections of the one before (default: 10)."""


def tune_gc_for_serving() -> int:
    """Collect, freeze every object alive and set `SERVING_THRESHOLDS`; return how many objects
    are frozen in all."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_THRESHOLDS)
    return gc.get_freeze_count()
