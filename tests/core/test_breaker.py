"""The per-host circuit breaker as tables: a sequence of steps (attempt outcomes, admissions, time)
and the state after each, with an injected clock (epoch microseconds)."""

from __future__ import annotations

from typing import Any

import pytest

from shim.core import BreakerPolicy, HealthBook, health_outcome

S = 1_000_000
P = BreakerPolicy(failure_threshold=3, failure_rate=0.5, min_attempts=6, window=10, open_s=10, max_open_s=30,
                  probe_timeout_s=5)

# Steps: ("ok"|"fail"|"none", t_s) records an attempt at t; ("admit", t_s) asks to start one.
# Expected after each step: the state, and for "admit" also whether it was allowed.
Step = tuple[str, float]


def run(steps: list[Step], policy: BreakerPolicy = P) -> list[Any]:
    book = HealthBook(policy)
    out: list[Any] = []
    for kind, t in steps:
        now = int(t * S)
        if kind == "admit":
            allowed, _ = book.admit("h:80", now)
            out.append((book.state("h:80"), allowed))
        else:
            book.record("h:80", {"ok": True, "fail": False, "none": None}[kind], 0.01, now)
            out.append(book.state("h:80"))
    return out


@pytest.mark.parametrize(("steps", "expected"), [
    # consecutive failures open at the threshold
    ([("fail", 0), ("fail", 1), ("fail", 2)], ["closed", "closed", "open"]),
    # a success in between resets the count
    ([("fail", 0), ("fail", 1), ("ok", 2), ("fail", 3), ("fail", 4)], ["closed"] * 5),
    # open: nothing starts before open_s, one probe after it (half-open), then no second one
    ([("fail", 0), ("fail", 0), ("fail", 0), ("admit", 9.9), ("admit", 10), ("admit", 11)],
     ["closed", "closed", "open", ("open", False), ("half-open", True), ("half-open", False)]),
    # probe success closes; everything flows again
    ([("fail", 0), ("fail", 0), ("fail", 0), ("admit", 10), ("ok", 10.1), ("admit", 10.2), ("admit", 10.2)],
     ["closed", "closed", "open", ("half-open", True), "closed", ("closed", True), ("closed", True)]),
    # probe failure re-opens for twice as long (10 -> 20 s), then 30 (the cap), then 30
    ([("fail", 0), ("fail", 0), ("fail", 0), ("admit", 10), ("fail", 10),
      ("admit", 29.9), ("admit", 30), ("fail", 30), ("admit", 59.9), ("admit", 60), ("fail", 60),
      ("admit", 89.9), ("admit", 90)],
     ["closed", "closed", "open", ("half-open", True), "open",
      ("open", False), ("half-open", True), "open", ("open", False), ("half-open", True), "open",
      ("open", False), ("half-open", True)]),
    # a probe that made no attempt (refused target) frees the next probe
    ([("fail", 0), ("fail", 0), ("fail", 0), ("admit", 10), ("none", 10), ("admit", 10.1)],
     ["closed", "closed", "open", ("half-open", True), "half-open", ("half-open", True)]),
    # a lost probe (never reported) stops blocking after probe_timeout_s
    ([("fail", 0), ("fail", 0), ("fail", 0), ("admit", 10), ("admit", 14.9), ("admit", 15)],
     ["closed", "closed", "open", ("half-open", True), ("half-open", False), ("half-open", True)]),
    # failure rate (judged on a failure): 3 of 5 failed is under min_attempts; a success never opens
    ([("fail", 0), ("ok", 0), ("fail", 0), ("ok", 0), ("fail", 0), ("ok", 0)], ["closed"] * 6),
    # 3 of 6 failed, never 3 in a row: opens at the 6th attempt
    ([("fail", 0), ("ok", 0), ("fail", 0), ("ok", 0), ("ok", 0), ("fail", 0)], ["closed"] * 5 + ["open"]),
    # 2 of 6: stays closed
    ([("ok", 0), ("ok", 0), ("fail", 0), ("ok", 0), ("ok", 0), ("fail", 0)], ["closed"] * 6),
    # late answers while open change nothing (a success does not close it early)
    ([("fail", 0), ("fail", 0), ("fail", 0), ("ok", 1), ("admit", 2)],
     ["closed", "closed", "open", "open", ("open", False)]),
])
def test_breaker_table(steps: list[Step], expected: list[Any]) -> None:
    assert run(steps) == expected


def test_disabled_never_opens_but_still_counts() -> None:
    book = HealthBook(BreakerPolicy(enabled=False, failure_threshold=1))
    for t in range(5):
        assert book.record("h:80", False, 0.5, t * S) == (None, None)
    assert book.state("h:80") == "closed"
    assert book.admit("h:80", 0) == (True, None)
    assert book.skip_hosts(0) == []
    snap = book.snapshot()[0]
    assert (snap["failures"], snap["successes"], snap["successRate"], snap["consecutiveFailures"]) == (5, 0, 0.0, 5)


def test_window_counts_and_latency() -> None:
    book = HealthBook(BreakerPolicy(window=4, failure_threshold=100, min_attempts=100))
    for i, ok in enumerate([False, False, True, True, True, True]):
        book.record("h:80", ok, (i + 1) / 1000, 0)
    snap = book.snapshot()[0]
    # only the last 4 attempts count; latencies of all 6 are in the (64-sample) ring
    assert (snap["successes"], snap["failures"], snap["successRate"]) == (4, 0, 1.0)
    assert snap["latencyMs"] == {"p50": 4.0, "p99": 6.0, "samples": 6}
    assert snap["state"] == "closed" and snap["openedUs"] is None and snap["nextProbeUs"] is None


def test_skip_hosts_and_snapshot_order() -> None:
    book = HealthBook(P)
    book.record("good:80", True, 0.01, 0)
    for _ in range(3):
        book.record("bad:80", False, 0.01, 0)
    assert book.skip_hosts(int(5 * S)) == ["bad:80"]
    assert book.skip_hosts(int(10 * S)) == []  # due for a probe: claimable again
    snap = book.snapshot()
    assert [s["host"] for s in snap] == ["bad:80", "good:80"]
    assert snap[0]["openedUs"] == 0 and snap[0]["nextProbeUs"] == 10 * S and snap[0]["openS"] == 10


def test_hosts_tracked_are_capped() -> None:
    book = HealthBook(P, max_hosts=3)
    for _ in range(3):
        book.record("a:80", False, None, 0)  # open
    evicted = [book.record(f"h{i}:80", True, None, 0)[1] for i in range(3)]
    assert evicted == [None, None, "a:80"]  # least recently attempted goes first
    assert len(book.hosts) == 3 and book.unhealthy == set() and book.skip_hosts(0) == []


@pytest.mark.parametrize(("ok", "status", "permanent", "expected"), [
    (True, 200, False, True),
    (False, 500, False, False),
    (False, 503, False, False),
    (False, None, False, False),  # timeout, connection error
    (False, 408, False, False),
    (False, 429, False, False),
    (False, 404, False, True),  # the receiver answered: the host is up
    (False, 401, False, True),
    (False, None, True, None),  # refused by the address policy: no attempt made
])
def test_health_outcome(ok: bool, status: int | None, permanent: bool, expected: bool | None) -> None:
    assert health_outcome(ok, status, permanent) is expected
