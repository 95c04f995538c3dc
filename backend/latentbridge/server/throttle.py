"""Backoff for wrong tokens: an address that keeps guessing is slowed down, and logged.

The first few failures from an address cost nothing (a typo, a stale token in a config file).
After that every attempt from that address, right or wrong, waits for its turn: attempts are
spaced `delay` apart, and the delay doubles with each further failure up to
`auth_backoff_max_s`. Spacing turns (rather than sleeping each request for the same time) also
holds when an attacker sends many attempts in parallel: they are served one per delay. An
attempt whose turn is further away than the longest delay is refused at once without checking
its token, so waiting requests stay few. One right token resets the address.

Addresses are tracked in a bounded table that forgets quiet addresses, so a flood of addresses
cannot grow it without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..protocol import ErrorCode, LatentBridgeError

log = logging.getLogger(__name__)

FREE_FAILURES = 3  # failures before any delay
BASE_DELAY_S = 0.25  # the first delay; doubled per further failure
FORGET_AFTER_S = 600.0  # an address quiet this long starts afresh
MAX_TRACKED = 4096


@dataclass
class _Entry:
    failures: int = 0
    next_turn: float = 0.0  # monotonic time of the next attempt's turn
    last_seen: float = 0.0


class TooManyAttempts(LatentBridgeError):
    code = ErrorCode.unauthorized

    def __init__(self, retry_after_s: float):
        super().__init__(f"too many wrong tokens from this address; retry in {retry_after_s:.0f} s")
        self.retry_after_s = max(1, round(retry_after_s))


class AuthThrottle:
    def __init__(self, max_delay_s: float):
        self.max_delay_s = max_delay_s
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def delay_for(self, failures: int) -> float:
        if failures < FREE_FAILURES or self.max_delay_s <= 0:
            return 0.0
        return min(self.max_delay_s, BASE_DELAY_S * 2 ** (failures - FREE_FAILURES))

    def _entry(self, address: str, now: float) -> _Entry | None:
        entry = self._entries.get(address)
        if entry is not None and now - entry.last_seen > FORGET_AFTER_S:
            del self._entries[address]
            return None
        return entry

    async def wait_turn(self, address: str) -> None:
        """Before checking a token from `address`: wait for its turn, or raise TooManyAttempts."""
        now = time.monotonic()
        entry = self._entry(address, now)
        if entry is None:
            return
        delay = self.delay_for(entry.failures)
        if delay <= 0:
            return
        turn = max(now, entry.next_turn)
        if turn - now > self.max_delay_s:
            raise TooManyAttempts(turn - now)
        entry.next_turn = turn + delay
        if turn > now:
            await asyncio.sleep(turn - now)

    def failed(self, address: str) -> None:
        now = time.monotonic()
        entry = self._entry(address, now) or _Entry()
        entry.failures += 1
        entry.last_seen = now
        self._entries[address] = entry
        self._entries.move_to_end(address)
        while len(self._entries) > MAX_TRACKED:
            self._entries.popitem(last=False)
        delay = self.delay_for(entry.failures)
        log.warning("wrong token from %s (%d in a row)%s", address, entry.failures,
                    f"; its next attempts are spaced {delay:g} s apart" if delay else "")

    def succeeded(self, address: str) -> None:
        if self._entries.pop(address, None) is not None:
            log.info("right token from %s after earlier failures; backoff reset", address)
