"""The approval record (guards/approval_record.py): the pure binding and approver rules, and the records themselves in
one replica (memory store, SQLite state) and across replicas (a real Redis): decided once, used once, the decision
kept in the durable state across a restart while the one-use ticket is not."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from proxy.durable import SqliteState, open_state
from proxy.identity.approvals import (
    Approvals,
    approver_problem,
    binding_problem,
    call_key,
    new_id,
    policy_version,
    valid_id,
)
from proxy.policy.model import Policy
from proxy.store import MemoryStore, open_store

BOUND = {"credential_id": "pat_1", "subject": "alice", "kind": "pat", "session": "", "tool": "post",
         "workspace": "acme", "digest": "d1"}


def request(**changes: Any) -> dict[str, Any]:
    return {"id": new_id(), "created": time.time(), "expires": time.time() + 60, "preview_id": "p1", "tool": "post",
            "shown": {"memo": "x"}, "dry_run": False, "upstream_preview": None, "fresh_seconds": None,
            "policy": "v1", "rule_scopes": ["mcp:write"], "approvers": {"roles": [], "subjects": ["bob"]},
            "four_eyes": True, "requester": {"subject": "alice", "credential_id": "pat_1", "label": "l",
                                             "kind": "pat", "role": None},
            "link": "http://127.0.0.1/oauth/approvals/x", **BOUND, **changes}


def test_every_binding_is_checked() -> None:
    bound = {**BOUND, "policy": "v1", "expires": 100.0}
    assert binding_problem(bound, 50, "v1", BOUND) == ("", None)
    assert binding_problem(bound, 100, "v1", BOUND)[0] == "expired"
    assert binding_problem(bound, 50, "v2", BOUND)[0] == "policy"
    for name, value, code in [("credential_id", "pat_2", "credential"), ("kind", "oauth", "credential"),
                              ("session", "s2", "session"), ("tool", "other", "tool"),
                              ("workspace", "globex", "workspace"), ("digest", "d2", "arguments")]:
        assert binding_problem(bound, 50, "v1", {**BOUND, name: value})[0] == code


def test_who_may_decide() -> None:
    held = request()
    assert "four eyes" in approver_problem(held, "alice", None, ("mcp:write",))
    assert approver_problem(held, "bob", None, ()) is None
    assert "not one of" in approver_problem(held, "carol", "controller", ("mcp:write",))
    by_role = request(approvers={"roles": ["controller"], "subjects": []}, four_eyes=False)
    assert approver_problem(by_role, "carol", "controller", ()) is None
    assert approver_problem(by_role, "alice", None, ("mcp:write",)) is not None
    anyone = request(approvers={"roles": [], "subjects": []}, four_eyes=False)
    assert approver_problem(anyone, "dave", None, ("mcp:read", "mcp:write")) is None
    assert "holds what the write itself needs" in approver_problem(anyone, "dave", None, ("mcp:read",))
    # Four eyes binds whoever the requester is, role or no role.
    assert "four eyes" in approver_problem(request(approvers={"roles": ["controller"], "subjects": []}),
                                           "alice", "controller", ())


def test_ids_versions_and_call_keys() -> None:
    assert valid_id(new_id()) and not valid_id("apv_../x") and not valid_id("other") and not valid_id(None)
    one, two = Policy(version=1, name="a"), Policy(version=1, name="b")
    assert policy_version(one) == policy_version(Policy(version=1, name="a")) != policy_version(two)
    assert call_key(BOUND) == call_key(dict(BOUND)) != call_key({**BOUND, "digest": "d2"})


async def exercise(approvals: Approvals) -> None:
    held = request()
    await approvals.ask(held)
    assert [r["id"] for r in await approvals.waiting()] == [held["id"]]
    by = {"subject": "bob", "credential_id": "pat_b", "kind": "pat", "role": None}
    first, second = await asyncio.gather(approvals.decide(held["id"], True, by, "ok"),
                                         approvals.decide(held["id"], False, by, "no"))
    assert [d is None for d in (first, second)].count(True) == 1  # decided once
    assert (await approvals.decision(held["id"]))["decision"] == ("approved" if first else "declined")
    assert await approvals.waiting() == []
    if first is not None:
        uses = await asyncio.gather(*(approvals.use(held["id"]) for _ in range(20)))
        assert uses.count(True) == 1  # used once, however many retries race


async def test_records_in_one_replica(tmp_path: Path) -> None:
    for _ in range(3):  # either decision may win the race: both paths run
        await exercise(Approvals(MemoryStore(), SqliteState(None)))
    # The decision is evidence: it outlives a restart; the one-use ticket and the request do not (fail closed).
    state = open_state(str(tmp_path), MemoryStore())
    approvals = Approvals(MemoryStore(), state)
    held = request()
    await approvals.ask(held)
    await approvals.decide(held["id"], True, {"subject": "bob", "credential_id": "b", "kind": "pat"}, "")
    await state.close()
    state = open_state(str(tmp_path), MemoryStore())
    restarted = Approvals(MemoryStore(), state)
    assert (await restarted.decision(held["id"]))["by"]["subject"] == "bob"
    assert not await restarted.use(held["id"])
    await state.close()


async def test_records_across_replicas(redis_server: Any) -> None:
    stores = [open_store(redis_server.url), open_store(redis_server.url)]
    states = [open_state(None, store) for store in stores]
    one, two = (Approvals(store, state) for store, state in zip(stores, states, strict=True))
    held = request()
    await one.ask(held)
    assert [r["id"] for r in await two.waiting()] == [held["id"]]
    waiting = asyncio.create_task(one.wait(held["id"], 10))
    await asyncio.sleep(0.2)
    await two.decide(held["id"], True, {"subject": "bob", "credential_id": "b", "kind": "pat"}, "")
    assert await asyncio.wait_for(waiting, 5)  # the decision on one replica wakes the call held on the other
    uses = await asyncio.gather(*(approvals.use(held["id"]) for approvals in (one, two) for _ in range(10)))
    assert uses.count(True) == 1
    for _ in range(2):
        await exercise(one)
    for store in stores:
        await store.close()


async def test_an_expired_request_cannot_be_decided() -> None:
    approvals = Approvals(MemoryStore(), SqliteState(None))
    held = request(expires=time.time() - 1)
    await approvals.ask(held)
    assert await approvals.waiting() == []
    decided = await approvals.decide(held["id"], True, {"subject": "bob"}, "")
    assert decided is None or decided["decision"] == "expired"
    assert await approvals.decision(held["id"]) is None and not await approvals.use(held["id"])
