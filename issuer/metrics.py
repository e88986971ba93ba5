"""Prometheus metrics of the issuer.

With several worker processes, ``wimse-issuer serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the workers start, so
``/metrics`` on any worker reports the sum over all of them
(prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from typing import Any

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
    "forget_process",
    "labelled",
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


@functools.lru_cache(maxsize=1024)
def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, kept: ``labels`` takes a lock and builds
    a key on every call, which the token endpoint would pay two or three
    times per request. The child is the same object ``labels`` returns.
    Only for metrics whose children are never removed (not
    ``POLICY_INFO``), and label values from a bounded set (endpoints, OAuth
    error codes, grant types, levels, evidence kinds)."""
    return metric.labels(*values)


# A live-mode gauge file of one process, as prometheus_client names it.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def forget_process(pid: int) -> None:
    """Drop the live gauges (``wimse_policy_info``) of process ``pid`` in
    multiprocess mode: one that died, or the serve command's own, which
    serves no request and would keep showing the policy it started with."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _forget_dead_processes(folder: str) -> None:
    """A worker killed by a signal leaves its live gauge files behind, and
    granian's replacement has another pid: drop the files of processes that
    no longer run, so ``/metrics`` shows the workers that do."""
    for name in os.listdir(folder):
        match = _LIVE_GAUGE_FILE.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):  # another worker was first
                os.remove(os.path.join(folder, name))
        except OSError:
            pass  # alive (another user's process); keep it


def render() -> bytes:
    """The exposition text: this process's metrics, or every running
    worker's in multiprocess mode."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        _forget_dead_processes(folder)
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()
