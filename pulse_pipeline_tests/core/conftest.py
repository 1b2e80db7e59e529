"""Fixtures of the core tests: a real Pushgateway scraped by a real Prometheus, once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pulse_pipeline_tests.prometheus_servers import PrometheusStack


@pytest.fixture(scope="session")
def prometheus_stack() -> Iterator[PrometheusStack]:
    with PrometheusStack() as stack:
        yield stack
