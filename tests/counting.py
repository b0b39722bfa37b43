"""Counting work instead of timing it: a test that compares seconds goes red on a busy machine,
a count of calls does not.

``count_work(fn, *args)`` runs ``fn`` under cProfile (C-level, so cheap enough for a 1 MB parse)
and returns its result with the number of function calls it made, Python and builtin alike, and
the number of full (generation 2) garbage collections that ran inside it — the collector's
rescans of a growing graph were what once made parsing superlinear, and calls do not show them.
"""

from __future__ import annotations

import cProfile
import gc
import pstats
from typing import NamedTuple


class Work(NamedTuple):
    result: object
    calls: int  # function calls made by fn, Python and builtin
    full_collections: int  # generation-2 garbage collections during fn


def count_work(fn, *args, **kwargs) -> Work:
    """``fn(*args, **kwargs)`` with its calls and full collections counted (an exception from
    ``fn`` propagates)."""
    gc.collect()
    before = gc.get_stats()[2]["collections"]
    profile = cProfile.Profile()
    profile.enable()
    try:
        result = fn(*args, **kwargs)
    finally:
        profile.disable()
    calls = pstats.Stats(profile).total_calls
    return Work(result, calls, gc.get_stats()[2]["collections"] - before)
