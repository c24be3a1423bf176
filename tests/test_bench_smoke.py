"""`make bench` is not part of `make test`, so its in-process part runs here once, small: when a step's signature
changes, the bench must change with it (it broke unnoticed three times while the request path moved)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_bench_measures_list_filtering_with_todays_pipeline() -> None:
    sys.path.insert(0, str(BENCH))  # as `python bench/run.py` sees its neighbours
    try:
        import run  # bench/run.py

        parse_ms, filter_ms, cached_ms, kept = run.filter_cost(rounds=1)
    finally:
        sys.path.remove(str(BENCH))
    assert 0 < kept < 1000  # the bench policy lets the caller see part of the 1,000-tool list
    assert parse_ms > 0 and filter_ms > 0 and cached_ms > 0
