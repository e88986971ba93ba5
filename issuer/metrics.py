"""Prometheus metrics of the issuer.

With several worker processes, ``wimse-issuer serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the workers start, so
``/metrics`` on any worker reports the sum over all of them
(prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

__all__ = [
    "CONTENT_TYPE_LATEST",
    "EVIDENCE_SECONDS",
    "ISSUED",
    "POLICY_INFO",
    "REFUSED",
    "REQUEST_SECONDS",
    "render",
]

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

ISSUED = Counter(
    "wimse_tokens_issued",
    "Access tokens issued, by grant type and levels.",
    ["grant_type", "mial", "maal"],
)
REFUSED = Counter(
    "wimse_token_requests_refused",
    "Token endpoint refusals, by OAuth error code.",
    ["error"],
)
REQUEST_SECONDS = Histogram(
    "wimse_request_seconds",
    "Time to answer a request, by endpoint.",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
)
EVIDENCE_SECONDS = Histogram(
    "wimse_evidence_verification_seconds",
    "Time to verify one piece of evidence, by kind.",
    ["kind"],
    buckets=_LATENCY_BUCKETS,
)
POLICY_INFO = Gauge(
    "wimse_policy_info",
    "The policy version in force (value 1).",
    ["version"],
    multiprocess_mode="liveall",
)


def render() -> bytes:
    """The exposition text: this process's metrics, or every worker's in
    multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()
