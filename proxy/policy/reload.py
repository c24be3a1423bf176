"""Hot reload: a changed policy file (polled every second, loaded once it has stopped changing) or SIGHUP re-reads
the policy, validates it, and swaps it in.

An invalid new policy is refused and the old one stays in force; the failure is logged (and counted, for
/metrics). The swap happens without an `await` in between, so no request sees half of the old and half of the new
policy. What cannot change without a restart (issuers, the OAuth server, required upstream headers, the identity
assertion) is refused the same way.

Whatever else holds the policy (the PAT registry's principals, the JWT verifier) follows through a `Follower`: it
prepares its part for the new policy first (and may refuse it by raising), and commits in the same swap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.exchange import Exchange
from proxy.files import file_stamp
from proxy.policy.decide import Rules
from proxy.policy.model import Policy, PolicyError, load_policy

log = logging.getLogger("scopegate.policy")

# Given the new policy, prepare (raising ValueError or PolicyError to refuse it) and return the commit to run at the
# swap. Identity's registry and verifier are followers; the policy package knows nothing about them.
Follower = Callable[[Policy], Callable[[], None]]


@dataclass
class LivePolicy:
    """The policy in force, read on every decision through this one holder.

    A request is decided by one policy generation, whatever reload lands while its guards await: `pin` copies the
    pair onto the Exchange at admission, and every step reads `of(exchange)`, the pinned pair when there is one.
    """

    policy: Policy
    rules: Rules

    def pin(self, exchange: Exchange) -> None:
        exchange.policy = LivePolicy(self.policy, self.rules)

    def of(self, exchange: Exchange) -> LivePolicy:
        return exchange.policy if exchange.policy is not None else self


@dataclass
class PolicyReloader:
    path: str
    live: LivePolicy
    tool_prefix: tuple[str, ...]
    followers: tuple[Follower, ...] = ()
    results: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    on_result: Callable[[str], None] | None = None
    _stamp: tuple[int, int] | None = None  # the file as last loaded (or refused)

    def __post_init__(self) -> None:
        self._stamp = file_stamp(self.path)

    def reload(self) -> bool:
        self._stamp = file_stamp(self.path)
        old = self.live.policy
        try:
            new = load_policy(self.path)
            fixed = ("issuers", "oauth", "upstream_headers", "upstream_identity")
            if [getattr(new, name) for name in fixed] != [getattr(old, name) for name in fixed]:
                raise PolicyError(f"{self.path}: issuers, oauth, upstream_headers and upstream_identity change only "
                                  "with a restart")
            commits = [follow(new) for follow in self.followers]
        except (PolicyError, ValueError) as exc:
            self._result("failure")
            log.error("policy reload refused; the policy in force stays: %s", exc)
            return False
        # The swap: no await from here to the end, so every request sees one policy or the other.
        self.live.policy, self.live.rules = new, Rules(new, self.tool_prefix)
        for commit in commits:
            commit()
        self._result("success")
        log.info("policy reloaded: %s (%d tool rules)", new.name or self.path, len(new.tools))
        return True

    def _result(self, result: str) -> None:
        self.results[result] += 1
        if self.on_result is not None:
            self.on_result(result)

    async def poll(self, settle: float = 0.25) -> bool:
        """One look at the file: when it changed, look again `settle` seconds later and reload only if it stayed
        the same, so a file caught half-written (an editor or `cp` still writing it) is not loaded; the next poll
        tries again. True when it reloaded."""
        stamp = file_stamp(self.path)
        if stamp == self._stamp:
            return False
        await asyncio.sleep(settle)
        if file_stamp(self.path) != stamp:
            return False
        return self.reload()

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.poll()
