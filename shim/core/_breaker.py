"""Endpoint health and the per-host circuit breaker, as a pure state machine: time is an argument
(epoch microseconds), nothing here does I/O.

States (Convoy's model): ``closed`` (deliveries flow), ``open`` (the host's deliveries are not
claimed until ``next_probe_us``), ``half-open`` (one probe attempt is let through; success closes,
failure re-opens for twice as long, up to ``max_open_s``).

What counts: an attempt that got a 2xx, or an answer the receiver chose (4xx other than 408/429:
the host is up, the request is what it refuses) is a *success* for health; a timeout, a connection
error, 5xx, 408 and 429 are *failures*. An attempt shim did not make (the address policy refused
the target) is *neutral*: it only ends a probe.

Bookkeeping per attempt is O(1): a fixed window of recent outcomes with running counts, and a small
ring of recent latencies (sorted only when ``/admin/hosts`` is read).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Literal

State = Literal["closed", "half-open", "open"]
CLOSED: State = "closed"
HALF_OPEN: State = "half-open"
OPEN: State = "open"
STATES: tuple[State, ...] = (CLOSED, HALF_OPEN, OPEN)
# ``shim_callback_host_state``: 0 closed, 1 half-open, 2 open.
STATE_VALUE: dict[str, int] = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
LATENCY_SAMPLES = 64


@dataclass(frozen=True)
class BreakerPolicy:
    enabled: bool = True
    # Opens after this many consecutive failures ...
    failure_threshold: int = 5
    # ... or when at least this share of the last ``window`` attempts failed, once there were
    # ``min_attempts`` of them.
    failure_rate: float = 0.5
    min_attempts: int = 20
    window: int = 100
    # First open period; each failed probe doubles it, up to ``max_open_s``.
    open_s: float = 30.0
    max_open_s: float = 600.0
    # A probe that never reports back (cancelled, lost) stops blocking the host after this long.
    probe_timeout_s: float = 60.0


def health_outcome(ok: bool, status: int | None, permanent: bool) -> bool | None:
    """What an attempt says about its host: True (up), False (failing), None (no attempt made)."""
    if ok:
        return True
    if permanent:
        return None
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return True
    return False


@dataclass
class HostHealth:
    host: str
    window: int
    state: State = CLOSED
    successes: int = 0  # in the window
    failures: int = 0  # in the window
    consecutive_failures: int = 0
    recent: deque[bool] = field(default_factory=deque)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    opened_us: int | None = None
    next_probe_us: int | None = None
    open_s: float = 0.0
    probe_until_us: int | None = None  # set while a half-open probe is in flight

    def blocked(self, now_us: int) -> bool:
        """Whether the host's deliveries must not be claimed now (the claim's skip list)."""
        if self.state == OPEN:
            return self.next_probe_us is None or now_us < self.next_probe_us
        if self.state == HALF_OPEN:
            return self.probe_until_us is not None and now_us < self.probe_until_us
        return False

    def snapshot(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        total = self.successes + self.failures

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        return {
            "host": self.host, "state": self.state, "successes": self.successes, "failures": self.failures,
            "successRate": round(self.successes / total, 4) if total else None,
            "consecutiveFailures": self.consecutive_failures,
            "latencyMs": {"p50": pct(0.5), "p99": pct(0.99), "samples": len(lat)},
            "openedUs": self.opened_us, "nextProbeUs": self.next_probe_us,
            "openS": self.open_s if self.state != CLOSED else None,
        }


def _open(h: HostHealth, open_s: float, now_us: int) -> State:
    h.state = OPEN
    h.open_s = open_s
    h.opened_us = now_us
    h.next_probe_us = now_us + int(open_s * 1_000_000)
    h.probe_until_us = None
    return OPEN


def record(h: HostHealth, p: BreakerPolicy, outcome: bool | None, latency_s: float | None, now_us: int) -> State | None:
    """Account one finished attempt; returns the state entered, if the attempt changed it."""
    if outcome is None:
        h.probe_until_us = None  # a probe that made no attempt: the next one may go
        return None
    if latency_s is not None:
        h.latencies.append(latency_s)
    h.recent.append(outcome)
    if outcome:
        h.successes += 1
        h.consecutive_failures = 0
    else:
        h.failures += 1
        h.consecutive_failures += 1
    if len(h.recent) > h.window:
        if h.recent.popleft():
            h.successes -= 1
        else:
            h.failures -= 1
    if not p.enabled:
        return None
    if h.state == HALF_OPEN:  # the probe's answer decides
        if outcome:
            h.state, h.opened_us, h.next_probe_us, h.probe_until_us, h.open_s = CLOSED, None, None, None, 0.0
            # A fresh start: the failures that opened it must not trip the rate rule again.
            h.recent.clear()
            h.successes, h.failures = 1, 0
            h.recent.append(True)
            return CLOSED
        return _open(h, min(max(h.open_s, p.open_s) * 2, p.max_open_s), now_us)
    if h.state == CLOSED and not outcome:
        total = h.successes + h.failures
        if h.consecutive_failures >= p.failure_threshold or (
            total >= p.min_attempts and h.failures >= p.failure_rate * total
        ):
            return _open(h, min(p.open_s, p.max_open_s), now_us)
    return None  # open: late answers of attempts started before it opened change nothing


def admit(h: HostHealth, p: BreakerPolicy, now_us: int) -> tuple[bool, State | None]:
    """May an attempt to this host start now? Returns (allowed, state entered). An open host whose
    open period is over lets one probe through and turns half-open."""
    if h.state == CLOSED or not p.enabled:
        return True, None
    if h.blocked(now_us):
        return False, None
    entered: State | None = None
    if h.state == OPEN:
        h.state = entered = HALF_OPEN
    h.probe_until_us = now_us + int(p.probe_timeout_s * 1_000_000)
    return True, entered


class HealthBook:
    """Every recently attempted host's health, at most ``max_hosts`` of them (least recently
    attempted forgotten first), with the set of hosts that are not closed kept aside so the claim's
    skip list costs what is unhealthy, not what is known."""

    def __init__(self, policy: BreakerPolicy, max_hosts: int = 1000) -> None:
        self.policy = policy
        self.max_hosts = max_hosts
        self.hosts: OrderedDict[str, HostHealth] = OrderedDict()
        self.unhealthy: set[str] = set()

    def _get(self, host: str) -> tuple[HostHealth, str | None]:
        """The host's health (created if new, marked most recent) and the host forgotten for it."""
        h = self.hosts.get(host)
        evicted = None
        if h is None:
            h = self.hosts[host] = HostHealth(host, self.policy.window)
            if len(self.hosts) > self.max_hosts:
                evicted, _ = self.hosts.popitem(last=False)
                self.unhealthy.discard(evicted)
        else:
            self.hosts.move_to_end(host)
        return h, evicted

    def record(self, host: str, outcome: bool | None, latency_s: float | None,
               now_us: int) -> tuple[State | None, str | None]:
        """(state entered, host forgotten to make room)."""
        h, evicted = self._get(host)
        entered = record(h, self.policy, outcome, latency_s, now_us)
        self._track(h)
        return entered, evicted

    def admit(self, host: str, now_us: int) -> tuple[bool, State | None]:
        h = self.hosts.get(host)
        if h is None or h.state == CLOSED:  # the hot path: one dict lookup
            return True, None
        allowed, entered = admit(h, self.policy, now_us)
        self._track(h)
        return allowed, entered

    def skip_hosts(self, now_us: int) -> list[str]:
        return [host for host in self.unhealthy if self.hosts[host].blocked(now_us)]

    def state(self, host: str) -> State:
        h = self.hosts.get(host)
        return h.state if h is not None else CLOSED

    def snapshot(self) -> list[dict[str, Any]]:
        """Unhealthy hosts first, then by host."""
        return [h.snapshot() for h in sorted(self.hosts.values(), key=lambda h: (-STATE_VALUE[h.state], h.host))]

    def _track(self, h: HostHealth) -> None:
        if h.state == CLOSED:
            self.unhealthy.discard(h.host)
        else:
            self.unhealthy.add(h.host)
