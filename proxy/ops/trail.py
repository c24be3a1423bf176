"""The audit trail's proof: hash chains sealed by signed checkpoints, and the verifier that needs only a public key.

Each proxy process writes one chain. Its first record is a *genesis* (which process, how often it seals, and the
last checkpoint of its predecessor where the sink knows it); every record carries `chain`, `seq`, `prev` (the hash
of the record before) and its own `hash`; every N records or T seconds, and at shutdown (`final`), a *checkpoint*
carries the record count and head hash. Genesis and checkpoints are signed with Ed25519 over their hash, so whoever
can rewrite the trail but does not hold the private key cannot re-hash, fabricate or truncate it unseen (the idea of
CloudTrail's signed digest files and Certificate Transparency's signed tree heads). A live chain heartbeats: it
seals every T seconds even when idle, so a chain whose last seal is older than 2T and that never closed was cut (or
its process died: a successor's genesis says which).

Each chain belongs to a *slot* (0, or the worker's number with SCOPEGATE_WORKERS): a chain's successor is the next
chain of the same slot, and its genesis names the last seal (checkpoint, or genesis when nothing followed it) of the
slot's previous chain. Within the trail that proves every chain but the newest of each slot: a chain deleted whole,
in the middle or at the start, leaves a genesis naming a predecessor the trail lacks. The newest chains, and a trail
rolled back to an older copy, are proved only against a *head* kept outside the sink: `Tip`s (a chain's seal an
auditor kept, or the anchor sink's latest seals) that the trail must still hold.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS_PREV = "0" * 64
UNSIGNED = "unsigned"
SEALS = ("genesis", "checkpoint")  # the signed records: what a successor names and what an anchor keeps


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k not in ("hash", "signature")}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class KeyProblem(Exception):
    """A key file that cannot be read or is not an Ed25519 key (one line)."""


def load_private_key(path: str) -> Ed25519PrivateKey:
    try:
        with open(path, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyProblem(f"{path}: not a readable PEM private key ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyProblem(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str) -> Ed25519PublicKey:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        key: Any = serialization.load_pem_public_key(data)
    except ValueError:
        try:  # the private key file works too: its public half is what verifies
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise KeyProblem(f"{path}: not a PEM public key") from None
    except OSError as exc:
        raise KeyProblem(f"{path}: cannot read it ({exc.strerror})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyProblem(f"{path}: not an Ed25519 public key")
    return key


def write_key_pair(private_path: str, public_path: str) -> str:
    """A new key pair; the private file is created with mode 0600 (never readable by others, not even briefly)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = key.public_key()
    with open(public_path, "xb") as handle:
        handle.write(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(public)


class Chain:
    """Links records of one process and seals them. Not thread-safe: one writer task owns it."""

    def __init__(self, key: Ed25519PrivateKey | None, every: int = 1000, seconds: float = 60.0,
                 chain_id: str | None = None, slot: int = 0) -> None:
        self.id = chain_id or secrets.token_hex(8)
        self.slot = slot  # written in every seal: a restarted worker's sink finds its own slot's last one
        self.key = key
        self.key_id = key_id(key.public_key()) if key is not None else UNSIGNED
        self.every = every
        self.seconds = seconds
        self.seq = 0
        self.prev = GENESIS_PREV
        self.unsealed = 0
        self.sealed_at = 0.0
        self.last_checkpoint: dict[str, Any] | None = None

    def _sign(self, record: dict[str, Any]) -> dict[str, Any]:
        record["hash"] = record_hash(record)
        if self.key is not None:
            record["signature"] = base64.b64encode(self.key.sign(record["hash"].encode())).decode()
        return record

    def _next(self, record: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        return {**record, "chain": self.id, "seq": self.seq, "prev": self.prev}

    def genesis(self, process: dict[str, Any], predecessor: dict[str, Any] | None, now: str,
                clock: float | None = None) -> dict[str, Any]:
        record = self._sign(self._next({
            "type": "genesis", "time": now, "process": process, "slot": self.slot, "key": self.key_id,
            "checkpoint_every": self.every, "checkpoint_seconds": self.seconds,
            "predecessor": ({k: predecessor.get(k) for k in ("chain", "seq", "hash", "time")}
                            if predecessor else None),
        }))
        self.prev = record["hash"]
        self.sealed_at = time.monotonic() if clock is None else clock
        self.last_checkpoint = record
        return record

    def link(self, record: dict[str, Any]) -> dict[str, Any]:
        """`link_line`, parsed."""
        linked: dict[str, Any] = orjson.loads(self.link_line(record))
        return linked

    def link_line(self, record: dict[str, Any]) -> bytes:
        """The record linked into the chain, as the line the trail keeps: its members in sorted order, then its
        hash, which is the hash of exactly the bytes before it (`record_hash` of the parsed line gives the same,
        since orjson writes what it reads back byte for byte). Serialised once; `record` itself is given its chain,
        seq and prev (no copy). Raises, and leaves the chain as it was, when the record cannot be serialised."""
        record["chain"], record["seq"], record["prev"] = self.id, self.seq + 1, self.prev
        body = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(body).hexdigest()
        self.seq += 1
        self.prev = digest
        self.unsealed += 1
        return b"".join((body[:-1], b',"hash":"', digest.encode(), b'"}'))

    def due(self, clock: float | None = None) -> bool:
        clock = time.monotonic() if clock is None else clock
        return self.unsealed >= self.every or clock - self.sealed_at >= self.seconds

    def checkpoint(self, now: str, final: bool = False, clock: float | None = None) -> dict[str, Any]:
        record = self._sign(self._next({"type": "checkpoint", "time": now, "count": self.seq, "head": self.prev,
                                        "key": self.key_id, "final": final, "slot": self.slot}))
        self.prev = record["hash"]
        self.unsealed = 0
        self.sealed_at = time.monotonic() if clock is None else clock
        self.last_checkpoint = record
        return record


# ---- verification (pure: records, a public key and the time in; a report out) ----

@dataclass
class _ChainState:
    seq: int = 0
    head: str = GENESIS_PREV
    every: int = 0
    seconds: float = 0.0
    sealed_seq: int = 0
    sealed_time: str | None = None
    sealed_position: int = 0
    final: bool = False
    last_time: str | None = None
    position: int = 0  # of the chain's last record read
    checkpoints: dict[int, str] = field(default_factory=dict)  # seq -> hash of each seal (the genesis is one)


class HeadProblem(Exception):
    """A kept head that is not one (one line)."""


@dataclass(frozen=True)
class Tip:
    """One record a trail must still hold: a chain's newest record when an auditor kept the head, or the newest
    seal of a chain in the anchor sink."""

    chain: str
    seq: int
    hash: str
    source: str = "the kept head"

    def __str__(self) -> str:
        return f"{self.chain}:{self.seq}:{self.hash}"


def parse_head(text: str) -> list[Tip]:
    """`chain:seq:hash[,chain:seq:hash...]`, as `scopegate audit head` prints it."""
    tips = []
    for part in text.split(","):
        chain, _, rest = part.strip().rpartition(":")
        chain, _, seq = chain.rpartition(":")
        if not (chain and seq.isdigit() and int(seq) >= 1 and len(rest) == 64
                and all(c in "0123456789abcdef" for c in rest)):
            raise HeadProblem(f"not a head (chain:seq:hash, comma-separated): {part.strip()[:80]!r}")
        tips.append(Tip(chain, int(seq), rest))
    return tips


def format_head(tips: Sequence[Tip]) -> str:
    return ",".join(map(str, tips))


@dataclass
class Report:
    records: int = 0
    chains: int = 0
    problems: list[str] = field(default_factory=list)  # each names the record (position in the trail) concerned
    notes: list[str] = field(default_factory=list)  # unsealed tails and the like: said, not failed
    head: list[Tip] = field(default_factory=list)  # what to keep outside the sink: every chain's newest record

    @property
    def whole(self) -> bool:
        return not self.problems


def _seconds_since(stamp: str | None, now: float) -> float | None:
    if not stamp:
        return None
    try:
        whole, _, millis = stamp.rstrip("Z").partition(".")
        parsed = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
        return now - parsed - int(millis or 0) / 1000
    except (ValueError, OverflowError):
        return None


def _kept(chain: str, seq: int, record: dict[str, Any], expected: dict[tuple[str, int], Tip], found: set[Tip],
          problem: Callable[[str, str], None], where: str) -> bool:
    """Whether the record at a kept position is another than the one kept (said as the chain's problem)."""
    tip = expected.get((chain, seq))
    if tip is None:
        return False
    if tip.hash != record.get("hash"):
        problem(chain, f"{where}: not the record {tip.source} names at this seq: the chain was rewritten")
        return True
    found.add(tip)
    return False


def _signed(record: dict[str, Any], key: Ed25519PublicKey | None) -> bool:
    if key is None:
        return True
    signature = record.get("signature")
    if not isinstance(signature, str):
        return False
    try:
        key.verify(base64.b64decode(signature, validate=True), str(record.get("hash")).encode())
    except (InvalidSignature, ValueError):
        return False
    return True


def anchor_tips(records: Sequence[Any], key: Ed25519PublicKey | None) -> tuple[list[Tip], list[str]]:
    """The newest seal of each chain in an anchor sink's records (other lines skipped), and the problems of the
    anchor itself: a seal whose hash or signature does not verify is not taken for one."""
    newest: dict[str, Tip] = {}
    problems = []
    for position, record in enumerate(records, start=1):
        if not (isinstance(record, dict) and record.get("type") in SEALS and isinstance(record.get("chain"), str)
                and isinstance(record.get("seq"), int)):
            continue
        if record.get("hash") != record_hash(record) or (key is not None and not _signed(record, key)):
            problems.append(f"anchor record {position} (chain {record['chain']}, seq {record['seq']}): its hash or "
                            f"signature does not verify: not a seal of this trail")
            continue
        tip = Tip(record["chain"], record["seq"], record["hash"], "the anchor")
        if record["chain"] not in newest or newest[record["chain"]].seq < tip.seq:
            newest[record["chain"]] = tip
    return list(newest.values()), problems


def verify(records: Sequence[Any], key: Ed25519PublicKey | None, now: float | None = None,
           expect: Sequence[Tip] = ()) -> Report:
    """Check every chain in `records` (in trail order; chains may interleave). With `key`, every genesis and
    checkpoint must carry its signature; without one only the links are checked (and the report says so).
    The first problem of each chain is reported, with the record's position (1 = the first record read).
    `expect`: records kept outside the sink (a head, an anchor's seals) that the trail must still hold."""
    now = time.time() if now is None else now
    report = Report()
    chains: dict[str, _ChainState] = {}
    broken: set[str] = set()
    successors: list[tuple[int, dict[str, Any]]] = []
    expected = {(tip.chain, tip.seq): tip for tip in expect}
    found: set[Tip] = set()

    def problem(chain: str, text: str) -> None:
        if chain not in broken:
            broken.add(chain)
            report.problems.append(text)

    for position, record in enumerate(records, start=1):
        report.records = position
        where = f"record {position}"
        if not isinstance(record, dict) or not isinstance(record.get("chain"), str):
            problem(f"#{position}", f"{where}: not an audit record (no chain id)")
            continue
        chain_id = record["chain"]
        seq = record.get("seq")
        where = f"record {position} (chain {chain_id}, seq {seq})"
        if chain_id in broken:
            continue
        if record.get("hash") != record_hash(record):
            moved = next((c for c in chains if c != chain_id and record_hash({**record, "chain": c}) ==
                          record.get("hash")), None)
            problem(chain_id, f"{where}: moved here from chain {moved}" if moved else
                    f"{where}: edited (its hash does not match its content)")
            continue
        state = chains.get(chain_id)
        if state is None:
            state = chains[chain_id] = _ChainState()
            if record.get("type") != "genesis" or seq != 1:
                problem(chain_id, f"{where}: chain {chain_id} does not begin with its genesis record "
                                  f"(its first records were deleted, or the chain is fabricated)")
                continue
            if key is not None and not _signed(record, key):
                problem(chain_id, f"{where}: chain {chain_id}'s genesis is "
                                  + ("not signed" if record.get("key") == UNSIGNED else
                                     "not signed by this key: a fabricated chain"))
                continue
            state.every = record.get("checkpoint_every") if isinstance(record.get("checkpoint_every"), int) else 0
            state.seconds = float(record.get("checkpoint_seconds") or 0)
            state.sealed_seq, state.sealed_time = 1, record.get("time")  # the genesis is signed: sealed
            state.sealed_position = position
            state.head, state.seq, state.last_time = record["hash"], 1, record.get("time")
            state.checkpoints[1], state.position = record["hash"], position
            if isinstance(record.get("predecessor"), dict):
                successors.append((position, record))
            if expected:
                _kept(chain_id, 1, record, expected, found, problem, where)
            continue
        if not isinstance(seq, int) or seq <= state.seq:
            problem(chain_id, f"{where}: out of order (seq {seq} comes after seq {state.seq}): reordered or "
                              f"duplicated")
            continue
        if seq > state.seq + 1:
            later = next((p for p, r in enumerate(records[position:], start=position + 1) if isinstance(r, dict)
                          and r.get("chain") == chain_id and r.get("seq") == state.seq + 1), None)
            if later is not None:
                problem(chain_id, f"{where}: out of order (seq {state.seq + 1} comes later, at record {later}): "
                                  f"reordered")
                continue
            missing = f"seq {state.seq + 1}" + (f" to {seq - 1}" if seq - 1 > state.seq + 1 else "")
            problem(chain_id, f"{where}: records {missing} of chain {chain_id} are missing before it (deleted)")
            continue
        if record.get("prev") != state.head:
            problem(chain_id, f"{where}: does not link to the record before it (moved from another chain, "
                              f"inserted, or the chain was re-hashed)")
            continue
        state.seq, state.head, state.last_time, state.position = seq, record["hash"], record.get("time"), position
        if expected and _kept(chain_id, seq, record, expected, found, problem, where):
            continue
        if record.get("type") == "checkpoint":
            first = state.sealed_seq + 1
            if key is not None and not _signed(record, key):
                problem(chain_id, f"{where}: checkpoint signature does not verify: records seq {first} to "
                                  f"{seq - 1} were edited and re-hashed (or the checkpoint is forged); the first "
                                  f"record concerned is seq {first}")
                continue
            if record.get("count") != seq - 1 or record.get("head") != record.get("prev"):
                problem(chain_id, f"{where}: checkpoint does not match the records it seals")
                continue
            state.sealed_seq, state.sealed_time, state.sealed_position = seq, record.get("time"), position
            state.checkpoints[seq] = record["hash"]
            state.final = record.get("final") is True
        elif state.final:
            problem(chain_id, f"{where}: a record after the chain's final checkpoint (appended or moved)")
        elif state.every and seq - state.sealed_seq > state.every + 1:
            problem(chain_id, f"{where}: {state.every} records passed without a checkpoint (a checkpoint was "
                              f"deleted and the chain re-hashed)")

    # A successor's genesis names where its predecessor was last sealed: the trail must hold that much of it, and
    # the predecessor itself (a chain deleted whole, at the start or in the middle, leaves its successor's name).
    accounted: set[str] = set()
    ended: dict[str, int] = {}  # chain -> the seq its successor names
    for position, record in successors:
        before = record["predecessor"]
        chain_id, seq = before.get("chain"), before.get("seq")
        state = chains.get(chain_id) if isinstance(chain_id, str) else None
        if record["chain"] in broken or chain_id in broken:
            continue
        if state is None:
            problem(record["chain"], f"record {position} (chain {record['chain']}, genesis): its predecessor chain "
                                     f"{chain_id} (sealed at seq {seq}) is not in this trail: deleted whole (or "
                                     f"trimmed off the start of the stream)")
            continue
        accounted.add(chain_id)
        if isinstance(seq, int):
            ended[chain_id] = max(seq, ended.get(chain_id, 0))
        if not isinstance(seq, int) or seq > state.seq:
            problem(chain_id, f"record {position} (chain {record['chain']}, genesis): its predecessor chain "
                              f"{chain_id} was sealed at seq {seq}, but the trail ends at seq {state.seq} "
                              f"(records deleted from its end)")
        elif state.checkpoints.get(seq) != before.get("hash"):
            problem(chain_id, f"record {position} (chain {record['chain']}, genesis): its predecessor's last "
                              f"checkpoint (chain {chain_id}, seq {seq}) is not the one in this trail")

    # What was kept outside the sink: each record must still be here (not rolled back to an older copy, not cut).
    for tip in expect:
        if tip in found or tip.chain in broken:
            continue
        state = chains.get(tip.chain)
        if state is None:
            problem(tip.chain, f"{tip.source} names chain {tip.chain} at seq {tip.seq}, but this trail has no chain "
                               f"{tip.chain}: rolled back to an older copy, or the chain was deleted whole")
        elif state.seq < tip.seq:
            problem(tip.chain, f"record {state.position} (chain {tip.chain}, seq {state.seq}): the chain ends here, "
                               f"but {tip.source} names its seq {tip.seq}: its end was cut, or the trail was rolled "
                               f"back to an older copy")

    for chain_id, state in chains.items():
        if chain_id not in broken and ended.get(chain_id) != state.seq:
            report.head.append(Tip(chain_id, state.seq, state.head))
        if chain_id in broken or state.final:
            continue
        tail = state.seq - state.sealed_seq
        sealed_age = _seconds_since(state.sealed_time, now)
        age = f"{sealed_age:.0f} s ago" if sealed_age is not None else "at an unknown time"
        if tail:
            newest = _seconds_since(state.last_time, now)
            report.notes.append(f"chain {chain_id}: {tail} record{'s' if tail != 1 else ''} after its last seal "
                                f"(seq {state.sealed_seq}, {age}) unsealed: the newest is "
                                + (f"{newest:.0f} s old" if newest is not None else "of unknown age"))
        stale = sealed_age is not None and state.seconds and sealed_age > 2 * state.seconds + 5
        if stale and chain_id not in accounted:
            problem(chain_id, f"record {state.sealed_position} (chain {chain_id}, seq {state.sealed_seq}): the "
                              f"chain's last seal is {age}, it seals every {state.seconds:g} s and never closed: "
                              f"its end was deleted (or its process died)")
        elif stale:
            report.notes.append(f"chain {chain_id}: ended without a final checkpoint (its process stopped; a "
                                f"successor accounts for it up to seq {state.sealed_seq})")
    report.chains = len(chains)
    if key is None:
        report.notes.append("signatures NOT checked (no --key): a re-hashed or fabricated trail would pass")
    return report
