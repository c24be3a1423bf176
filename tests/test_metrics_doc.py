"""docs/metrics.md describes every metric the registry serves, with its labels; and names nothing that is not."""

from __future__ import annotations

import re
from pathlib import Path

from proxy.ops.metrics import Metrics

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def served() -> dict[str, set[str]]:
    """name as scraped (counters with _total) -> label names."""
    metrics = Metrics()
    metrics.message("tools/call", "allow")  # a labelled family shows its labels once it has a sample
    metrics.auth_failures.labels("no_bearer").inc()
    metrics.confirmation("preview", "")
    metrics.upstream_errors.labels("connect").inc()
    metrics.limited.labels("streams").inc()
    metrics.rate_limited("writes")
    metrics.policy_reloads.labels("success").inc()
    metrics.oauth_event("oauth/token", "deny", "refresh token replayed: grant revoked")
    metrics.duration.labels("POST").observe(0.1)
    metrics.audit_records.labels("decision").inc()
    metrics.pin_drift.labels("tool", "drift", "hide").inc()
    metrics.approvals.labels("requested").inc()
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        name = name + "_info" if family.type == "info" else name
        names[name] = {label for sample in family.samples for label in sample.labels if label not in ("le",)}
    return names


def documented() -> dict[str, set[str]]:
    rows = re.findall(r"^\| `([a-z_]+)` \|\s*\w+\s*\|([^|]*)\|", DOC.read_text(), re.M)
    return {name: set(re.findall(r"`([a-z_]+)`", labels)) for name, labels in rows}


def test_every_metric_is_documented_with_its_labels() -> None:
    doc = documented()
    for name, labels in served().items():
        assert name in doc, f"{name} is served but not in docs/metrics.md"
        assert doc[name] == labels, (name, labels, doc[name])


def test_the_doc_names_no_metric_that_does_not_exist() -> None:
    assert set(documented()) <= set(served())
