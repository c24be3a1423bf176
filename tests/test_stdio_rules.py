"""The stdio bridge's pure decisions: the child's environment, where a message the server sent of its own goes, how
long a crashed child waits before it is started again."""

from __future__ import annotations

from proxy.edge.stdio.rules import (
    RESTART_MOST,
    child_env,
    declared,
    destination,
    header_variable,
    progress_token,
    restart_delay,
    speaks_modern,
)


def test_child_env_is_an_allow_list_plus_the_secrets() -> None:
    parent = {"PATH": "/bin", "HOME": "/home/x", "AWS_SECRET_ACCESS_KEY": "no", "SCOPEGATE_STREAM_KEY": "k",
              "GITHUB_HOST": "github.example"}
    env = child_env(parent, ("GITHUB_HOST", "SCOPEGATE_STREAM_KEY", "MISSING"), {"x-app-token": "s3cret"})
    assert env == {"PATH": "/bin", "HOME": "/home/x", "GITHUB_HOST": "github.example", "X_APP_TOKEN": "s3cret"}
    assert header_variable("github-token") == "GITHUB_TOKEN"


def test_restart_delay_grows_and_is_bounded() -> None:
    delays = [restart_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.0 and delays[1] > 0
    assert delays == sorted(delays) and delays[-1] == RESTART_MOST


def test_destination() -> None:
    waiting = [("subscriptions/listen", None), ("tools/call", "tok-1"), ("tools/call", None)]
    progress = {"method": "notifications/progress", "params": {"progressToken": "tok-1", "progress": 1}}
    assert destination(progress, waiting) == 1
    assert destination({**progress, "params": {"progressToken": "other"}}, waiting) is None
    assert destination({"method": "notifications/tools/list_changed"}, waiting) == 0
    assert destination({"method": "elicitation/create", "id": 5}, waiting) == 1  # the oldest call in flight
    assert destination({"method": "notifications/message"}, waiting[:1]) is None  # the GET stream's
    assert destination({"method": "notifications/message"}, []) is None
    assert progress_token({"params": {"_meta": {"progressToken": 7}}}) == 7
    assert progress_token({"params": []}) is None


def test_declared_and_speaks_modern() -> None:
    meta = {"io.modelcontextprotocol/clientCapabilities": {"sampling": {}, "elicitation": {"form": {}}},
            "io.modelcontextprotocol/clientInfo": {"name": "c", "version": "1"}}
    key, capabilities, info = declared({"params": {"_meta": meta}})
    reordered = {"elicitation": {"form": {}}, "sampling": {}}
    assert key == declared({"params": {"_meta": {**meta, "io.modelcontextprotocol/clientCapabilities": reordered}}})[0]
    assert capabilities == meta["io.modelcontextprotocol/clientCapabilities"] and info["name"] == "c"
    assert declared({"params": None}) == ("{}", {}, {"name": "scopegate", "version": "0"})
    assert speaks_modern({"result": {"supportedVersions": ["2026-07-28"]}})
    assert not speaks_modern({"error": {"code": -32601}}) and not speaks_modern(None)
