"""The trail proves itself: a signed trail is tampered with in every way an operator with write access to it could,
and `scopegate audit verify`, given only the public key, names the record concerned each time (exit 1); a whole
trail verifies (exit 0); what cannot be read is one line and exit 2."""

from __future__ import annotations

import calendar
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.ops.trail import Chain, load_private_key, record_hash, verify, write_key_pair

STAMP = "2026-01-01T00:00:00.000Z"
THEN = calendar.timegm(time.strptime("2026-01-01T00:00:00", "%Y-%m-%dT%H:%M:%S"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ed25519PrivateKey]:
    folder = tmp_path_factory.mktemp("keys")
    write_key_pair(str(folder / "audit.key"), str(folder / "audit.pub"))
    return folder / "audit.pub", load_private_key(str(folder / "audit.key"))


def make_trail(key: Ed25519PrivateKey | None, final: bool = True, tail: int = 0) -> list[dict[str, Any]]:
    """Two interleaved chains (a, b) of 7 decisions each, sealed every 3 records; `tail` more unsealed records on a."""
    a, b = Chain(key, every=3, seconds=60, chain_id="a"), Chain(key, every=3, seconds=60, chain_id="b")
    records = [a.genesis({"host": "pod-a"}, None, STAMP), b.genesis({"host": "pod-b"}, None, STAMP)]
    for n in range(7):
        for chain in (a, b):
            records.append(chain.link({"time": STAMP, "decision": "allow", "credential_id": f"{chain.id}-{n}"}))
            if chain.unsealed >= chain.every:
                records.append(chain.checkpoint(STAMP))
    if final:
        records += [a.checkpoint(STAMP, final=True), b.checkpoint(STAMP, final=True)]
    else:
        records += [a.checkpoint(STAMP), b.checkpoint(STAMP)]
    records += [a.link({"time": STAMP, "decision": "deny", "n": 100 + n}) for n in range(tail)]
    return records


def position(records: list[dict], chain: str, seq: int) -> int:
    return next(i for i, r in enumerate(records, start=1) if r["chain"] == chain and r["seq"] == seq)


def rehash(records: list[dict], chain: str, from_seq: int) -> list[dict]:
    """What someone without the key can do: recompute every hash and link of a chain from one record on."""
    out, prev = [], None
    for record in records:
        if record["chain"] == chain and record["seq"] >= from_seq:
            record = {**record, "prev": prev if prev is not None else record["prev"]}
            record["hash"] = record_hash(record)
        if record["chain"] == chain:
            prev = record["hash"]
        out.append(record)
    return out


def edited(records: list[dict]) -> list[dict]:
    i = position(records, "a", 4) - 1
    return [*records[:i], {**records[i], "decision": "deny"}, *records[i + 1:]]


def deleted(records: list[dict]) -> list[dict]:
    i = position(records, "a", 4) - 1
    return [*records[:i], *records[i + 1:]]


def reordered(records: list[dict]) -> list[dict]:
    i, j = position(records, "a", 3) - 1, position(records, "a", 4) - 1
    out = list(records)
    out[i], out[j] = out[j], out[i]
    return out


def rehashed(records: list[dict]) -> list[dict]:
    i = position(records, "a", 4) - 1
    changed = [*records[:i], {**records[i], "decision": "deny"}, *records[i + 1:]]
    return rehash(changed, "a", 4)


def fabricated(records: list[dict]) -> list[dict]:
    forger = Chain(Ed25519PrivateKey.generate(), every=3, chain_id="f")  # a key that is not the trail's
    return [*records, forger.genesis({"host": "pod-a"}, None, STAMP), forger.link({"time": STAMP, "n": 1}),
            forger.checkpoint(STAMP, final=True)]


def moved(records: list[dict]) -> list[dict]:
    i = position(records, "a", 4) - 1
    return [*records[:i], {**records[i], "chain": "b"}, *records[i + 1:]]


def moved_and_relinked(records: list[dict]) -> list[dict]:
    """Taken out of chain a and put into chain b at seq 4, with b's link and a fresh hash: b's seal breaks."""
    i = position(records, "a", 4) - 1
    j = position(records, "b", 4) - 1
    intruder = {**records[i], "chain": "b", "seq": 4, "prev": records[j]["prev"]}
    intruder["hash"] = record_hash(intruder)
    out = [*records[:j], intruder, *records[j + 1:]]
    return rehash(out, "b", 5)


def cut_end(records: list[dict]) -> list[dict]:
    """The final checkpoint and the records before it, gone: the chain now just stops, long ago."""
    final = position(records, "a", max(r["seq"] for r in records if r["chain"] == "a")) - 1
    return [r for k, r in enumerate(records) if not (r["chain"] == "a" and k >= final - 4)]


TAMPERINGS: list[tuple[Callable[[list[dict]], list[dict]], str, str]] = [
    (edited, "record 7 (chain a, seq 4)", "edited"),
    (deleted, "record 7 (chain a, seq 5)", "seq 4 of chain a are missing before it (deleted)"),
    (reordered, "record 5 (chain a, seq 4)", "out of order (seq 3 comes later, at record 7): reordered"),
    (rehashed, "record 8 (chain a, seq 5)", "records seq 2 to 4 were edited and re-hashed (or the checkpoint is "
                                            "forged); the first record concerned is seq 2"),
    (fabricated, "(chain f, seq 1)", "not signed by this key: a fabricated chain"),
    (moved, "record 7 (chain b, seq 4)", "moved here from chain a"),
    (moved_and_relinked, "record 10 (chain b, seq 5)", "edited and re-hashed"),
    (cut_end, "(chain a, seq", "never closed: its end was deleted"),
]


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    return subprocess.run([sys.executable, "-m", "proxy", *args], env=clean, capture_output=True, timeout=60,
                          input=stdin.decode() if stdin is not None else None, text=True)


def write(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def test_a_whole_trail_verifies(keys: tuple[Path, Ed25519PrivateKey], tmp_path: Path) -> None:
    public, key = keys
    records = make_trail(key)
    report = verify(records, key.public_key(), now=THEN)
    assert report.whole and report.records == len(records) and report.chains == 2 and not report.notes
    done = cli("audit", "verify", str(write(tmp_path / "t.jsonl", records)), "--key", str(public))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ok: {len(records)} records in 2 chains, every link whole, every seal signed" in done.stdout
    piped = cli("audit", "verify", "-", "--key", str(public), stdin=(tmp_path / "t.jsonl").read_bytes())
    assert piped.returncode == 0 and "in 2 chains" in piped.stdout


@pytest.mark.parametrize(("tamper", "names", "says"), TAMPERINGS, ids=[t[0].__name__ for t in TAMPERINGS])
def test_each_tampering_is_named(keys: tuple[Path, Ed25519PrivateKey], tmp_path: Path,
                                 tamper: Callable[[list[dict]], list[dict]], names: str, says: str) -> None:
    public, key = keys
    trail = write(tmp_path / "trail.jsonl", tamper(make_trail(key)))
    done = cli("audit", "verify", str(trail), "--key", str(public))
    assert done.returncode == 1, done.stdout + done.stderr
    broken = [line for line in done.stdout.splitlines() if line.startswith("BROKEN")]
    assert broken and names in broken[0] and says in broken[0], done.stdout
    assert "Traceback" not in done.stderr


def test_an_unsealed_tail_is_reported_with_its_age(keys: tuple[Path, Ed25519PrivateKey]) -> None:
    _, key = keys
    records = make_trail(key, final=False, tail=2)
    live = verify(records, key.public_key(), now=THEN + 30)  # a running process: sealed 30 s ago
    assert live.whole and any("2 records after its last seal" in n and "30 s old" in n for n in live.notes)
    # The last two records deleted: the trail still looks live, and says how much is unproven (the newest is 30 s).
    assert verify(records[:-2], key.public_key(), now=THEN + 30).whole
    stale = verify(records, key.public_key(), now=THEN + 3600)  # it stopped sealing an hour ago and never closed
    assert not stale.whole and "never closed" in stale.problems[0]


def test_a_successor_accounts_for_its_predecessor(keys: tuple[Path, Ed25519PrivateKey]) -> None:
    _, key = keys
    first = Chain(key, every=3, seconds=60, chain_id="old")
    records = [first.genesis({"host": "pod"}, None, STAMP), first.link({"n": 1}), first.checkpoint(STAMP),
               first.link({"n": 2}), first.checkpoint(STAMP), first.link({"n": 3})]  # then the process died
    successor = Chain(key, every=3, seconds=60, chain_id="new")
    records += [successor.genesis({"host": "pod"}, first.last_checkpoint, STAMP), successor.checkpoint(STAMP, True)]
    report = verify(records, key.public_key(), now=THEN + 3600)
    assert report.whole and any("successor accounts for it up to seq 5" in n for n in report.notes)
    cut = [r for r in records if not (r["chain"] == "old" and r["seq"] >= 4)]  # its last seal deleted
    report = verify(cut, key.public_key(), now=THEN + 3600)
    assert not report.whole and "sealed at seq 5, but the trail ends at seq 3" in report.problems[0]


def test_an_unsigned_trail_is_not_taken_for_a_signed_one(keys: tuple[Path, Ed25519PrivateKey], tmp_path: Path) -> None:
    public, _ = keys
    trail = write(tmp_path / "unsigned.jsonl", make_trail(None))
    done = cli("audit", "verify", str(trail), "--key", str(public))
    assert done.returncode == 1 and "genesis is not signed" in done.stdout
    links = cli("audit", "verify", str(trail), "--unsigned")
    assert links.returncode == 0 and "signatures NOT checked" in links.stdout


def test_what_cannot_be_read_is_one_line_and_exit_2(keys: tuple[Path, Ed25519PrivateKey], tmp_path: Path) -> None:
    public, _ = keys
    for args in (("audit", "verify", str(tmp_path / "absent.jsonl"), "--key", str(public)),
                 ("audit", "verify", str(write(tmp_path / "t.jsonl", [])), "--key", str(tmp_path / "absent.pub")),
                 ("audit", "verify", str(tmp_path / "t.jsonl"), "--key", str(tmp_path / "t.jsonl")),
                 ("audit", "verify", "--redis", "redis://127.0.0.1:1/0", "--key", str(public))):
        done = cli(*args)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
        assert done.stderr.startswith("scopegate audit verify: ")


def test_garbage_in_a_trail_is_named(keys: tuple[Path, Ed25519PrivateKey], tmp_path: Path) -> None:
    public, key = keys
    records = make_trail(key)
    trail = tmp_path / "t.jsonl"
    lines = [orjson.dumps(r) for r in records]
    trail.write_bytes(b"\n".join([*lines[:5], b"{half a record", *lines[5:]]) + b"\n")
    done = cli("audit", "verify", str(trail), "--key", str(public))
    assert done.returncode == 1 and "record 6: not an audit record" in done.stdout


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    done = cli("audit", "keygen", str(tmp_path / "k"))
    assert done.returncode == 0 and "key id" in done.stdout
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = cli("audit", "keygen", str(tmp_path / "k"))  # never overwrites a key
    assert again.returncode != 0 and "Traceback" not in again.stderr and len(again.stderr.splitlines()) == 1


# ---- what proves a chain deleted whole, and the newest records (a head kept outside the sink) ----

def make_lineage(key: Ed25519PrivateKey, stamp: str = STAMP, final: bool = True) -> list[dict[str, Any]]:
    """One slot's chains one after another (a process and its restarts): a, then b naming a, then c naming b;
    each of 4 decisions, sealed every 3, closed (c left open unless `final`)."""
    records: list[dict[str, Any]] = []
    before = None
    for name in ("a", "b", "c"):
        chain = Chain(key, every=3, seconds=60, chain_id=name)
        records.append(chain.genesis({"host": "pod"}, before, stamp))
        for n in range(4):
            records.append(chain.link({"time": stamp, "decision": "allow", "n": n}))
            if chain.unsealed >= chain.every:
                records.append(chain.checkpoint(stamp))
        if name != "c" or final:
            records.append(chain.checkpoint(stamp, final=True))
        before = chain.last_checkpoint
    return records


def without(records: list[dict], chain: str) -> list[dict]:
    return [r for r in records if r["chain"] != chain]


@pytest.mark.parametrize(("gone", "names"), [("a", "record 1 (chain b, genesis)"), ("b", "(chain c, genesis)")],
                         ids=["first_chain", "middle_chain"])
def test_a_chain_deleted_whole_is_named(keys: tuple[Path, Ed25519PrivateKey], tmp_path: Path, gone: str,
                                        names: str) -> None:
    """Its successor's signed genesis names it: a missing predecessor is a problem, at the start or in the middle."""
    public, key = keys
    records = make_lineage(key)
    assert verify(records, key.public_key(), now=THEN).whole
    done = cli("audit", "verify", str(write(tmp_path / "t.jsonl", without(records, gone))), "--key", str(public))
    assert done.returncode == 1, done.stdout
    broken = [line for line in done.stdout.splitlines() if line.startswith("BROKEN")]
    assert names in broken[0] and f"predecessor chain {gone} " in broken[0] and "deleted whole" in broken[0], broken


def test_a_successor_of_a_chain_that_only_began_accounts_for_it(keys: tuple[Path, Ed25519PrivateKey]) -> None:
    """A process that died before its first checkpoint: its genesis is its last seal, and its successor names it."""
    _, key = keys
    first = Chain(key, every=3, seconds=60, chain_id="short")
    records = [first.genesis({"host": "pod"}, None, STAMP), first.link({"n": 1})]
    successor = Chain(key, every=3, seconds=60, chain_id="next")
    records += [successor.genesis({"host": "pod"}, first.last_checkpoint, STAMP), successor.checkpoint(STAMP, True)]
    report = verify(records, key.public_key(), now=THEN + 3600)
    assert report.whole and any("successor accounts for it up to seq 1" in n for n in report.notes), report


def test_a_kept_head_finds_a_cut_newest_chain_and_a_rollback(keys: tuple[Path, Ed25519PrivateKey],
                                                            tmp_path: Path) -> None:
    public, key = keys
    from proxy.ops.audit import timestamp

    # Live: stamped now, so an older copy of the trail is itself whole (its newest records just unsealed).
    records = make_lineage(key, stamp=timestamp(time.time()), final=False)
    trail = write(tmp_path / "t.jsonl", records)
    head = cli("audit", "head", str(trail), "--key", str(public))
    assert head.returncode == 0 and head.stdout.count("\n") == 1, head.stdout + head.stderr
    newest = records[-1]
    assert head.stdout.strip() == f"c:{newest['seq']}:{newest['hash']}"  # a and b are vouched for by successors
    kept = head.stdout.strip()
    assert cli("audit", "verify", str(trail), "--key", str(public), "--expect", kept).returncode == 0

    older = records[:-2]  # rolled back to a copy of a moment before (c then had 2 records fewer)
    cut = without(records, "c")  # the newest chain deleted whole
    for tampered, says in ((older, f"(chain c, seq {newest['seq'] - 2}): the chain ends here, but the kept head "
                                   f"names its seq {newest['seq']}"),
                           (cut, "the kept head names chain c at seq")):
        copy = write(tmp_path / "tampered.jsonl", tampered)
        alone = cli("audit", "verify", str(copy), "--key", str(public))
        assert alone.returncode == 0 and "proved only against a head kept outside the sink" in alone.stdout
        done = cli("audit", "verify", str(copy), "--key", str(public), "--expect", kept)
        assert done.returncode == 1 and says in done.stdout, done.stdout
    rewritten = cli("audit", "verify", str(trail), "--key", str(public), "--expect",
                    f"c:{newest['seq']}:{'0' * 64}")
    assert rewritten.returncode == 1 and "not the record the kept head names" in rewritten.stdout
    for bad in ("c:1", "c:x:" + "0" * 64, "c:1:" + "g" * 64, ""):
        done = cli("audit", "verify", str(trail), "--key", str(public), "--expect", bad)
        assert done.returncode == 2 and done.stderr.startswith("scopegate audit verify: not a head"), done.stderr
    broken = cli("audit", "head", str(write(tmp_path / "b.jsonl", edited(make_trail(key)))), "--key", str(public))
    assert broken.returncode == 1 and not broken.stdout and "no head to keep" in broken.stderr


def test_an_anchor_finds_a_rollback_and_is_itself_checked(keys: tuple[Path, Ed25519PrivateKey],
                                                          tmp_path: Path) -> None:
    public, key = keys
    from proxy.ops.audit import timestamp

    records = make_lineage(key, stamp=timestamp(time.time()), final=False)
    anchor = write(tmp_path / "anchor.jsonl", [r for r in records if r.get("type") in ("genesis", "checkpoint")])
    trail = write(tmp_path / "t.jsonl", records)
    assert cli("audit", "verify", str(trail), "--key", str(public), "--anchor", str(anchor)).returncode == 0
    last_seal = max(i for i, r in enumerate(records) if r["chain"] == "c" and r.get("type") == "checkpoint")
    older = write(tmp_path / "older.jsonl", records[:last_seal])  # before c's newest seal
    done = cli("audit", "verify", str(older), "--key", str(public), "--anchor", str(anchor))
    assert done.returncode == 1 and "but the anchor names its seq" in done.stdout, done.stdout
    done = cli("audit", "verify", str(write(tmp_path / "cut.jsonl", without(records, "c"))), "--key", str(public),
               "--anchor", str(anchor))
    assert done.returncode == 1 and "the anchor names chain c" in done.stdout, done.stdout
    forged = tmp_path / "forged.jsonl"
    forged.write_bytes(anchor.read_bytes() + orjson.dumps({**records[0], "seq": 99}) + b"\n")
    done = cli("audit", "verify", str(trail), "--key", str(public), "--anchor", str(forged))
    assert done.returncode == 1 and "anchor record" in done.stdout and "does not verify" in done.stdout


TRAILS = Path(__file__).parent / "trails"


async def test_a_trail_written_before_slots_still_verifies_and_continues(tmp_path: Path) -> None:
    """tests/trails/v1-file.jsonl was written by 32f6dbf's code (a file sink; a process that died unsealed, then
    its successor, closed): no slot in its seals. It verifies as it did, and a new process continues it."""
    from proxy.ops.sinks import FileSink
    from proxy.ops.trail import load_public_key

    public = TRAILS / "v1.pub"
    old = [orjson.loads(line) for line in (TRAILS / "v1-file.jsonl").read_bytes().splitlines()]
    assert not any("slot" in r for r in old) and old[-1]["final"] is True
    report = verify(old, load_public_key(str(public)), now=time.time() + 86400)
    assert report.whole and any("a successor accounts for it" in n for n in report.notes), report
    done = cli("audit", "verify", str(TRAILS / "v1-file.jsonl"), "--key", str(public))
    assert done.returncode == 0 and f"ok: {len(old)} records in 2 chains" in done.stdout, done.stdout
    copy = tmp_path / "trail.jsonl"
    copy.write_bytes((TRAILS / "v1-file.jsonl").read_bytes())
    sink = FileSink(str(copy))
    assert await sink.last_checkpoint(1) == old[-1]  # a seal from before slots were is any slot's
    await sink.close()
