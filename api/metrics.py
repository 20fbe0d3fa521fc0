"""Prometheus metrics: request counts and latencies per route, jobs submitted, and jobs by status (read
from Redis at scrape time, so every API replica reports the same truth)."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.jobstore import JobStore


class JobsByStatus:
    def __init__(self, store: JobStore):
        self.store = store

    def collect(self):
        gauge = GaugeMetricFamily("longscale_jobs", "generation jobs by status", labels=["status"])
        try:
            for status, count in sorted(self.store.count_by_status().items()):
                gauge.add_metric([status], count)
        except Exception:  # Redis down: /metrics still answers, /healthz says what is wrong
            pass
        yield gauge


class Metrics:
    def __init__(self, store: JobStore):
        self.registry = CollectorRegistry()
        self.requests = Counter("longscale_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("longscale_http_request_seconds", "HTTP request latency", ["route"],
                                 registry=self.registry)
        self.jobs_submitted = Counter("longscale_jobs_submitted", "jobs accepted by POST /v1/jobs",
                                      registry=self.registry)
        self.registry.register(JobsByStatus(store))


ROUTE_KEY = "longscale.route"
API_PREFIX = "/v1"


def record_route(request: Request) -> None:
    """App-wide dependency: tell the metrics middleware which route template answered."""
    route = request.scope.get("route")
    holder = request.scope.get(ROUTE_KEY)
    if holder is not None and route is not None:
        path = getattr(route, "path", "other")
        if request.url.path.startswith(API_PREFIX) and not path.startswith(API_PREFIX):
            path = API_PREFIX + path  # newer FastAPI keeps included routes' paths without the prefix
        holder["path"] = path


class MetricsMiddleware:
    """Counts every request under its route template (not the raw path, which would explode the labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}
        matched: dict[str, str] = {}
        scope[ROUTE_KEY] = matched  # routing copies the scope shallowly: the route dependency fills this dict

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = matched.get("path", "other")
            self.metrics.requests.labels(scope["method"], route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
