"""Prometheus metrics of one runtime: requests, tokens, queue, adapter cache, payments, settlement."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    """One registry per app (tests start many apps in one process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("loraledger_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("loraledger_request_seconds", "Request latency by route", ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))  # fmt: skip
        self.requests_in_flight = Gauge("loraledger_requests_in_flight", "Completions being served", registry=r)
        self.tokens = Counter("loraledger_tokens", "Tokens processed", ["kind"], registry=r)
        self.payments = Counter("loraledger_payments", "Payment outcomes (charged, required, refusal codes)", ["result"],
                                registry=r)  # fmt: skip
        self.charged_wei = Counter("loraledger_charged_wei", "Total charged, in the token's smallest unit", registry=r)
        self.settlements = Counter("loraledger_settlements", "Settled claim batches", registry=r)
        self.queue = Gauge("loraledger_queue_requests", "Engine requests by state", ["state"], registry=r)
        self.kv_free = Gauge("loraledger_kv_blocks_free", "Free KV-cache blocks", registry=r)
        self.adapter_cache = Gauge("loraledger_adapter_cache", "Adapter cache counters", ["counter"], registry=r)
        self.unsettled_wei = Gauge("loraledger_unsettled_wei", "Charged but not yet claimed on chain", registry=r)
        self.forfeited_wei = Gauge("loraledger_forfeited_wei", "Charged on channels the chain will not pay",
                                   registry=r)  # fmt: skip
        self.settlement_lag = Gauge("loraledger_settlement_lag_seconds", "Seconds since the last settlement", registry=r)
        self.settlement_errors = Gauge("loraledger_settlement_failing", "1 while settlement is failing", registry=r)

    def bind(self, *, engine_stats: Callable[[], dict], unsettled: Callable[[], int], forfeited: Callable[[], int],
             last_settled_at: Callable[[], float | None], settlement_error: Callable[[], str | None]) -> None:  # fmt: skip
        """Gauges read at scrape time."""
        self.queue.labels(state="waiting").set_function(lambda: engine_stats()["waiting"])
        self.queue.labels(state="running").set_function(lambda: engine_stats()["running"])
        self.kv_free.set_function(lambda: engine_stats()["kv_blocks_free"])
        for counter in ("device_hits", "device_misses", "host_hits", "disk_reads", "device_evictions",
                        "host_evictions", "load_latency_p50_s", "load_latency_p99_s", "host_load_latency_p50_s",
                        "host_load_latency_p99_s", "disk_load_latency_p50_s", "disk_load_latency_p99_s",
                        "copy_p99_s", "copy_gb_per_s", "host_capacity_images", "host_used_images",
                        "host_pinned_bytes"):  # fmt: skip
            self.adapter_cache.labels(counter=counter).set_function(
                lambda c=counter: float(engine_stats()["adapters"].get(c) or 0)
            )
        self.unsettled_wei.set_function(lambda: float(unsettled()))
        self.forfeited_wei.set_function(lambda: float(forfeited()))
        started = time.time()
        self.settlement_lag.set_function(lambda: time.time() - (last_settled_at() or started))
        self.settlement_errors.set_function(lambda: 1.0 if settlement_error() else 0.0)
