"""Prometheus metrics, one registry per app so tests and replicas don't share state."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# What one attempt of a callback came to (``shim_callback_attempts_total{outcome}``).
ATTEMPT_OUTCOMES = ("ok", "http-error", "timeout", "network-error", "refused")
ATTEMPT_TARGETS = ("primary", "fallback")
# ``shim_callback_breaker_transitions_total{to}`` (the states of shim/core/_breaker.py).
BREAKER_STATES = ("closed", "half-open", "open")


class LoopHistogram(Collector):
    """A labelled Prometheus histogram kept as plain counts and rendered at scrape time.

    Why: ``prometheus_client.Histogram.observe`` takes a lock for its sum and again for its
    bucket (~1 µs), and a send observes four (issue 9). Every observation here comes from the
    event loop's thread (request handlers, the v2 client, the store's awaited writes, the
    delivery engine), which the GIL already serializes, so a list index is enough. A scrape
    (on that loop too) reads the counts as they stand. Exposed like prometheus_client's own:
    ``_bucket`` (cumulative, ``le`` formatted alike), ``_count``, ``_sum``; no ``_created``."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = (*(float(b) for b in buckets if b != float("inf")), float("inf"))
        self._les: list[str] = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], LoopHistogram.Child] = {}
        registry.register(self)

    class Child:
        __slots__ = ("bounds", "counts", "sum")

        def __init__(self, bounds: tuple[float, ...]) -> None:
            self.bounds = bounds
            self.counts = [0] * len(bounds)
            self.sum = 0.0

        def observe(self, amount: float) -> None:
            self.counts[bisect_left(self.bounds, amount)] += 1
            self.sum += amount

    def labels(self, *values: str) -> LoopHistogram.Child:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected {len(self.labelnames)} label values, got {len(values)}")
        child = self._series.get(values)
        if child is None:
            child = self._series[values] = LoopHistogram.Child(self.bounds)
        return child

    def observe(self, amount: float) -> None:
        """For an unlabelled histogram."""
        self.labels().observe(amount)

    def describe(self) -> list[Metric]:
        # The registry checks names against this at registration, before any series exists.
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._series.items()):
            running = 0
            buckets = []
            for le, n in zip(self._les, list(child.counts), strict=True):
                running += n
                buckets.append((le, running))
            family.add_metric(list(values), buckets, child.sum)
        yield family


class LoopCounter(Collector):
    """A labelled Prometheus counter kept as plain numbers, rendered at scrape time: the
    ``LoopHistogram`` of counters, for the ones counted on every request, event or attempt
    (prometheus_client's ``inc`` takes a lock, ~1 µs). Only the event loop's thread counts.
    Exposed like ``prometheus_client.Counter``: ``_total``; no ``_created``."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 registry: CollectorRegistry) -> None:
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], LoopCounter.Child] = {}
        if not self.labelnames:
            self.labels()  # an unlabelled counter shows 0 from the start, as prometheus_client's
        registry.register(self)

    class Child:
        __slots__ = ("value",)

        def __init__(self) -> None:
            self.value = 0.0

        def inc(self, amount: float = 1) -> None:
            if amount < 0:
                raise ValueError("counters can only be incremented by non-negative amounts")
            self.value += amount

    def labels(self, *values: str) -> LoopCounter.Child:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected {len(self.labelnames)} label values, got {len(values)}")
        child = self._series.get(values)
        if child is None:
            child = self._series[values] = LoopCounter.Child()
        return child

    def inc(self, amount: float = 1) -> None:
        """For an unlabelled counter."""
        self.labels().inc(amount)

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._series.items()):
            family.add_metric(list(values), child.value)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # ``process_*`` and ``python_*``: prometheus_client registers these on its global registry
        # only, and shim serves its own.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.requests = LoopCounter(
            "shim_http_requests", "HTTP requests served", ["route", "method", "status"], registry=r
        )
        self.request_duration = LoopHistogram(
            "shim_http_request_duration_seconds", "Time to answer an HTTP request, by route template",
            ["route", "method"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.upstream_latency = LoopHistogram(
            "shim_upstream_latency_seconds", "v2 API call latency", ["op", "status"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.store_latency = LoopHistogram(
            "shim_store_latency_seconds", "Store operation latency", ["op"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
        )
        self.events_ingested = LoopCounter(
            "shim_callback_events_ingested", "v2 callback events ingested", registry=r
        )
        self.events_rejected = Counter(
            "shim_callback_events_rejected", "v2 callback events rejected (not stored) by reason",
            ["reason"], registry=r,
        )
        self.deliveries = LoopCounter(
            "shim_callback_deliveries", "v1 callback delivery attempts by outcome", ["outcome"],
            registry=r,
        )
        self.events_unroutable = Counter(
            "shim_callback_events_unroutable",
            "v2 events for messages shim did not send, with no native_events route (not delivered)", registry=r,
        )
        self.attempts = LoopCounter(
            "shim_callback_attempts", "v1 callback HTTP attempts by target (primary/fallback URL) and outcome",
            ["target", "outcome"], registry=r,
        )
        self.delivery_latency = LoopHistogram(
            "shim_callback_ingest_to_delivered_seconds",
            "From a callback's enqueueing (the v2 event's ingest) to its successful delivery", registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400),
        )
        self.queue_depth = Gauge(
            "shim_callback_queue_depth", "Callbacks waiting for delivery", registry=r
        )
        self.dead_letters = Gauge("shim_callback_dead_letters", "Dead-lettered callbacks", registry=r)
        self.oldest_pending_age = Gauge(
            "shim_callback_oldest_pending_age_seconds",
            "Age of the oldest callback waiting for delivery (0 when none; refreshed by the sweeper)", registry=r,
        )
        self.upstream_up = Gauge("shim_upstream_up", "Whether the v2 API answered (1) or not (0) at the last scrape",
                                 registry=r)
        self.build_info = Gauge("shim_build_info", "shim's version and upstream mode (sandbox = no real SMS)",
                                ["version", "upstream_mode"], registry=r)
        self.host_state = Gauge(
            "shim_callback_host_state",
            "Circuit breaker state of each recently attempted callback host: 0 closed, 1 half-open, 2 open",
            ["host"], registry=r)
        self.breaker_transitions = Counter(
            "shim_callback_breaker_transitions", "Callback host circuit breaker transitions, by state entered",
            ["to"], registry=r)
        # Reconciliation (SPEC §9): what the runs looked up, repaired, gave up on, failed at.
        self.reconcile_looked_up = Counter(
            "shim_reconcile_looked_up", "Messages looked up in v2's message search", registry=r)
        self.reconcile_repaired = Counter(
            "shim_reconcile_repaired", "Messages whose state reconciliation repaired", ["outcome"], registry=r)
        self.reconcile_unresolvable = Counter(
            "shim_reconcile_unresolvable", "Messages marked unresolvable (older than v2's search window)",
            registry=r)
        self.reconcile_errors = Counter(
            "shim_reconcile_errors", "Reconcile runs stopped by an error (resumed at the next run)", registry=r)
        self.reconcile_rate_limited = Counter(
            "shim_reconcile_rate_limited", "429 answers from v2's message search (waited out)", registry=r)

        # Label children bound once per label set: ``labels()`` on every request is a measurable
        # part of a send (issue 9); a child's ``inc``/``observe`` alone is cheap.
        self._children: dict[tuple[Any, ...], Any] = {}
        self._store_write = self.store_latency.labels("write")
        self._store_read = self.store_latency.labels("read")
        # Every (target, outcome) child exists from the start: alert rules see 0, not "no data".
        self._attempts = {(t, o): self.attempts.labels(t, o) for t in ATTEMPT_TARGETS for o in ATTEMPT_OUTCOMES}
        self._transitions = {to: self.breaker_transitions.labels(to) for to in BREAKER_STATES}
        # host -> its shim_callback_host_state child, bound once; removed when the host is forgotten.
        self._host_states: dict[str, Any] = {}
        # (route, method) -> (duration child, {status: request counter child}): one dict lookup per
        # request for both, bound the first time a route is seen.
        self._routes: dict[tuple[str, str], tuple[Any, dict[int, Any]]] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def count_request(self, route: str, method: str, status: int, seconds: float | None = None) -> None:
        """One served request: counted by status, its duration observed when given."""
        key = (route, method)
        bound = self._routes.get(key)
        if bound is None:
            bound = self._routes[key] = (self.request_duration.labels(route, method), {})
        duration, by_status = bound
        counter = by_status.get(status)
        if counter is None:
            counter = by_status[status] = self.requests.labels(route, method, str(status))
        counter.inc()
        if seconds is not None:
            duration.observe(seconds)

    def count_attempt(self, target: str, outcome: str) -> None:
        self._attempts[target, outcome].inc()

    def knows_host(self, host: str) -> bool:
        return host in self._host_states

    def set_host_state(self, host: str, value: int) -> None:
        child = self._host_states.get(host)
        if child is None:
            child = self._host_states[host] = self.host_state.labels(host)
        child.set(value)

    def forget_host(self, host: str) -> None:
        if self._host_states.pop(host, None) is not None:
            self.host_state.remove(host)

    def count_transition(self, to: str) -> None:
        self._transitions[to].inc()

    def observe_store(self, op: str, seconds: float) -> None:
        (self._store_write if op == "write" else self._store_read if op == "read"
         else self.store_latency.labels(op)).observe(seconds)

    def count_delivery(self, outcome: str) -> None:
        self._child(self.deliveries, outcome).inc()

    def set_build_info(self, version: str, upstream_mode: str) -> None:
        self.build_info.labels(version, upstream_mode).set(1)

    def observe_upstream(self, op: str, seconds: float, status: int | str) -> None:
        self._child(self.upstream_latency, op, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
