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


def test_the_bench_measures_identity_assertions_with_todays_code() -> None:
    """`make bench IDENTITY=1`'s scopegate really runs with the assertion on; bench/assertion.py's in-process figures
    come from today's request path."""
    from yarl import URL

    from proxy.config import Config
    from proxy.identity.loader import load_identity

    sys.path.insert(0, str(BENCH))
    try:
        import assertion  # bench/assertion.py
        import run

        flags = run.identity_args(8123, 0)
        figures = assertion.measure(number=20, repeat=1)
    finally:
        sys.path.remove(str(BENCH))
    options = dict(zip(flags[::2], flags[1::2], strict=True))
    config = Config(upstream=URL("http://127.0.0.1:1/mcp"), policy=options["--policy"],
                    pat_file=str(run.BENCH_FOLDER / "pats.yaml"), public_url=URL(options["--public-url"]),
                    upstream_identity_keys=(options["--upstream-identity-keys"],))
    asserted = load_identity(config, {}).upstream_identity
    assert asserted is not None and asserted.reuse == 0
    assert set(figures) == {"ES256", "EdDSA"}
    assert all(f["naive"] > 0 and f["own"] > 0 for f in figures.values())


def test_the_bench_measures_conditions_and_limits_with_todays_code() -> None:
    """`make bench POLICY_FEATURES=1`'s policies load (five conditions on the called tool, a limit on it) and
    bench/conditions.py's in-process figures come from today's guards."""
    import asyncio

    from proxy.policy.decide import Rules
    from proxy.policy.model import load_policy

    sys.path.insert(0, str(BENCH))
    try:
        import conditions  # bench/conditions.py
        import run

        five = run.feature_args("cond")[1]
        limited = run.feature_args("limit", "unix:///nowhere")
        figures = asyncio.run(conditions.measure(number=20, repeat=1))
    finally:
        sys.path.remove(str(BENCH))
    rules = Rules(load_policy(five))
    assert len(rules.outcome("tool", "get_period_status").conditions) == 5
    assert limited[2:] == ["--redis-url", "unix:///nowhere"] and load_policy(limited[1]).limits[0].name == "bench"
    assert set(figures) == {"scope guard, no condition", "scope guard, five conditions", "rate limits, memory"}
