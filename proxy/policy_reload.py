"""Hot reload: a changed policy file (polled every second) or SIGHUP re-reads the policy, validates it, and swaps it in.

An invalid new policy is refused and the old one stays in force; the failure is logged (and counted, for
/metrics). The swap happens without an `await` in between, so no request sees half of the old and half of the new
policy. What cannot change without a restart (issuers, required upstream headers) is refused the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.decide import Rules
from proxy.files import file_stamp
from proxy.jwt_auth import JwtVerifier
from proxy.pats import Registry, RegistryError
from proxy.policy import Policy, PolicyError, load_policy

log = logging.getLogger("scopegate.policy")


@dataclass
class LivePolicy:
    """The policy in force, read on every decision through this one holder."""

    policy: Policy
    rules: Rules


@dataclass
class PolicyReloader:
    path: str
    live: LivePolicy
    registry: Registry | None
    verifier: JwtVerifier | None
    tool_prefix: tuple[str, ...]
    results: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    on_result: Callable[[str], None] | None = None
    _stamp: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self._stamp = file_stamp(self.path)

    def reload(self) -> bool:
        self._stamp = file_stamp(self.path)
        old = self.live.policy
        try:
            new = load_policy(self.path)
            if new.issuers != old.issuers or new.upstream_headers != old.upstream_headers:
                raise PolicyError(f"{self.path}: issuers and upstream_headers change only with a restart")
            principals = self.registry.principals_for(new) if self.registry is not None else None
        except (PolicyError, RegistryError) as exc:
            self._result("failure")
            log.error("policy reload refused; the policy in force stays: %s", exc)
            return False
        # The swap: no await from here to the end, so every request sees one policy or the other.
        self.live.policy, self.live.rules = new, Rules(new, self.tool_prefix)
        if self.registry is not None and principals is not None:
            self.registry.adopt(new, principals)
        if self.verifier is not None:
            self.verifier.policy = new
        self._result("success")
        log.info("policy reloaded: %s (%d tool rules)", new.name or self.path, len(new.tools))
        return True

    def _result(self, result: str) -> None:
        self.results[result] += 1
        if self.on_result is not None:
            self.on_result(result)

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            if file_stamp(self.path) != self._stamp:
                self.reload()
