"""Metrics and delivery-attempt logs read from a live shim's /metrics and log lines (SPEC §5)."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from shim.keys import ACCESS_LOG
from shim.ops._metrics import LoopCounter, LoopHistogram

from ..conftest import Harness, wait_until
from ..gateway.test_callbacks import post_events, v2_event
from .test_web_ops import metric


async def scrape(h: Harness) -> str:
    r = await h.session.get(f"{h.url}/metrics")
    assert r.status == 200
    return await r.text()


async def test_process_metrics_and_request_duration_by_route(harness: Harness) -> None:
    before = await scrape(harness)
    await harness.send(callbackUrl=f"{harness.receiver.url}/cb")
    after = await scrape(harness)
    # prometheus_client's process collector, on shim's own registry.
    assert metric(after, "process_cpu_seconds_total") > 0
    assert metric(after, "process_resident_memory_bytes") > 0
    route = "/v1/users/{userId}/messages"
    name = "shim_http_request_duration_seconds_count"
    assert metric(after, name, route=route, method="POST") == metric(before, name, route=route, method="POST") + 1
    assert metric(after, "shim_http_request_duration_seconds_bucket", route=route, method="POST", le="+Inf") >= 1
    # Every attempt outcome is exposed from the start (alerts see 0, not "no data").
    assert 'shim_callback_attempts_total{outcome="refused",target="fallback"} 0.0' in before


async def test_attempts_by_target_latency_and_oldest_pending_age(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The primary fails, the fallback answers: one attempt of each, counted by target and outcome;
    while the receiver keeps failing the oldest pending callback ages; once delivered, the ingest to
    delivered latency is observed and the age is back to 0."""
    caplog.set_level(logging.INFO, logger="shim.delivery")  # as setup_logging("INFO") does
    access: list[str] = []
    harness.app[ACCESS_LOG].write = access.append
    harness.receiver.script["/primary"] = [503]
    harness.receiver.script["/fallback"] = [500, 500, 500, 200]
    primary = harness.receiver.url.replace("http://", "http://hookuser:hook-pass-9@") + "/primary"
    await harness.send(callbackUrl=primary, fallbackUrl=f"{harness.receiver.url}/fallback")

    async def aging() -> bool:
        return metric(await scrape(harness), "shim_callback_oldest_pending_age_seconds") > 0

    await wait_until(aging, timeout=20)

    async def delivered() -> bool:
        return metric(await scrape(harness), "shim_callback_ingest_to_delivered_seconds_count") >= 1

    await wait_until(delivered, timeout=30)

    async def drained() -> bool:
        text = await scrape(harness)
        return (metric(text, "shim_callback_queue_depth") == 0
                and metric(text, "shim_callback_oldest_pending_age_seconds") == 0)

    await wait_until(drained, timeout=20)
    text = await scrape(harness)
    assert metric(text, "shim_callback_attempts_total", target="primary", outcome="http-error") >= 1
    assert metric(text, "shim_callback_attempts_total", target="fallback", outcome="http-error") >= 1
    assert metric(text, "shim_callback_attempts_total", target="fallback", outcome="ok") >= 1
    assert metric(text, "shim_callback_attempts_total", target="primary", outcome="ok") == 0
    # Retries took at least one scheduled delay: the latency counts from the enqueueing.
    assert metric(text, "shim_callback_ingest_to_delivered_seconds_sum") > 0

    harness.app[ACCESS_LOG].flush()
    lines = [json.loads(line) for line in "".join(access).splitlines()]
    attempts = [x for x in lines if x["msg"] == "callback attempt"]
    assert {(x["target"], x["outcome"], x["status"]) for x in attempts} >= {
        ("primary", "http-error", 503), ("fallback", "http-error", 500), ("fallback", "ok", 200)}
    for x in attempts:
        assert x["logger"] == "shim.delivery" and x["event_id"] and x["delivery_id"] and x["ms"] >= 0
        assert x["host"].startswith("127.0.0.1:") and x["user_id"] == "u-test"
    assert "hook-pass-9" not in "".join(access) and "hookuser" not in "".join(access)


async def test_unroutable_events_are_counted(harness: Harness) -> None:
    """An event for a message shim never sent, for a user without native_events: counted once the
    unmatched grace has passed and the sweeper gives up on it."""
    assert (await post_events(harness, [v2_event("not-ours-1")])).status == 200

    async def counted() -> bool:
        return metric(await scrape(harness), "shim_callback_events_unroutable_total") == 1

    await wait_until(counted, timeout=20)


@pytest.mark.parametrize("observations", [
    [],
    [0.0],
    [0.0005, 0.001, 0.0011, 0.3, 2.5, 10, 11],
    [float("inf"), 1e-9, 5.0, 5.0000001],
])
def test_loop_histograms_render_as_prometheus_client_histograms_do(observations: list[float]) -> None:
    """shim's own histograms (plain counts, no locks) expose the same series, byte for byte, as
    ``prometheus_client.Histogram`` fed the same observations (less its ``_created``)."""
    buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("x_seconds", "How long", ["route", "method"], registry=theirs, buckets=buckets)
    loop = LoopHistogram("x_seconds", "How long", ["route", "method"], registry=ours, buckets=buckets)
    for value in observations:
        reference.labels("/a", "POST").observe(value)
        loop.labels("/a", "POST").observe(value)
    reference.labels("/b", "GET")
    loop.labels("/b", "GET")
    expected = [line for line in generate_latest(theirs).decode().splitlines() if "_created" not in line]
    assert generate_latest(ours).decode().splitlines() == expected
    with pytest.raises(ValueError):
        loop.labels("/a")


@pytest.mark.parametrize("labelnames", [(), ("route", "status")])
@pytest.mark.parametrize("amounts", [[], [1], [1, 1, 2.5, 0, 1e9]])
def test_loop_counters_render_as_prometheus_client_counters_do(labelnames: tuple[str, ...],
                                                               amounts: list[float]) -> None:
    """shim's own counters (plain numbers, no locks) expose the same series, byte for byte, as
    ``prometheus_client.Counter`` counting the same (less its ``_created``), unlabelled ones at 0
    before anything is counted; a negative amount is refused as prometheus_client refuses it."""
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Counter("x_requests", "How many", labelnames, registry=theirs)
    loop = LoopCounter("x_requests", "How many", labelnames, registry=ours)
    values = ("/a", "201") if labelnames else ()
    for amount in amounts:
        reference.labels(*values).inc(amount) if labelnames else reference.inc(amount)
        loop.labels(*values).inc(amount) if labelnames else loop.inc(amount)
    if labelnames:
        reference.labels("/b", "400")
        loop.labels("/b", "400")
    expected = [line for line in generate_latest(theirs).decode().splitlines() if "_created" not in line]
    assert generate_latest(ours).decode().splitlines() == expected
    with pytest.raises(ValueError):
        loop.labels(*values).inc(-1)
    with pytest.raises(ValueError):
        loop.labels("/a", "201", "extra")
