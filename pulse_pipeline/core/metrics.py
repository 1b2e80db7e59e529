"""Prometheus metrics of trainings, evaluations, promotions and the retrain sensors.

Each metric, its labels and when it is set: docs/operations.md#metrics (METRICS below defines them;
pulse_pipeline_tests/test_docs.py holds the two to the same names).

Delivery: with `PULSE_PUSHGATEWAY_URL` set, to the Pushgateway under job `pulse_pipeline`, one
group per family (grouping key `family`), with `pushadd` (POST), which replaces only the metric
names pushed, so the sensor's and a training's pushes into the same group keep each other's
metrics. Otherwise a node-exporter textfile (`PULSE_METRICS_TEXTFILE`, default
`$PULSE_HOME/metrics/pulse.prom`) holding every family, rewritten atomically (a temporary file in
the same folder, then a rename) under an advisory lock beside it (`<file>.lock`), so one family's
write keeps the others' samples. Every write starts from a fresh `CollectorRegistry`.

Counters from short-lived processes: each process would count from 0, and a push or a rewrite
would put 1 where 5 was. So a counter is read, increased and written back: from the textfile (under
its lock), or from the Pushgateway's own `/metrics` for the family's group. The Pushgateway read
and push are not atomic: two processes adding to the same series at the same moment can lose one
increment (a family's trainings are serialized by its training lock, so in practice this takes two
promotions of one family ending within the same few milliseconds). Pushes of different metric names
never touch each other. The textfile is one machine's: where steps run on several machines (the
Helm chart's run pods), set the Pushgateway. A Pushgateway restarted without
`--persistence.file` starts the counters again from 0, which Prometheus's `increase()` and `rate()`
treat as a counter reset. In the textfile, series of metrics this module no longer defines are
dropped at the next write.

A metric that cannot be delivered never fails the training, evaluation, promotion or sensor tick
that made it: `record` logs one warning line and returns it. A push waits at most
`PUSH_TIMEOUT_S` for each of its two requests (a sensor tick pays that when the Pushgateway is
down); writing the textfile takes a few milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JOB = "pulse_pipeline"
PUSH_TIMEOUT_S = 3.0
LIVE_LOSS_INTERVAL_S = 30.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as exposed: a counter's ends in _total
    kind: str  # "counter" or "gauge"
    labels: tuple[str, ...]
    help: str


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("training_jobs_total", "counter", ("family", "status"), "Trainings ended, by status (success, failed)."),
        MetricSpec("training_duration_seconds", "gauge", ("family",), "Wall-clock seconds of the family's latest training."),
        MetricSpec("training_loss_current", "gauge", ("family",), "The latest training loss of the family's current or latest training."),
        MetricSpec("gpu_memory_utilization_percent", "gauge", ("family",), "Peak CUDA memory reserved by the latest training, percent of the GPU's; absent without CUDA."),
        MetricSpec("evaluation_metric_value", "gauge", ("family", "metric"), "The latest evaluated candidate's metric values, metric=<set>/<metric>."),
        MetricSpec("evaluations_total", "counter", ("family", "decision"), "Evaluations ended, by the gate's decision."),
        MetricSpec("promotions_total", "counter", ("family", "outcome"), "Promotions ended, by outcome."),
        MetricSpec("rollbacks_total", "counter", ("family",), "Rollbacks to the previous version that changed production."),
        MetricSpec("annotation_backlog", "gauge", ("family",), "New trainable annotations since the newest training's snapshot."),
        MetricSpec("sensor_lag_seconds", "gauge", ("family", "sensor"), "Age of the oldest valid annotation not yet trained on, at the sensor's latest tick."),
        MetricSpec("sensor_last_tick_timestamp_seconds", "gauge", ("family", "sensor"), "Unix time of the sensor's latest tick."),
    )
}  # fmt: skip


class MetricsError(RuntimeError):
    """Metrics that could not be delivered; the message names where and why."""


@dataclass(frozen=True)
class Update:
    """One change to one family's series: `set` a gauge, `add` to a counter, or `clear` every
    series of the metric (then set or add the ones that remain)."""

    name: str
    op: str  # "set", "add" or "clear"
    value: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)


def gauge(name: str, value: float, **labels: str) -> Update:
    return Update(name, "set", float(value), labels)


def increment(name: str, by: float = 1.0, **labels: str) -> Update:
    return Update(name, "add", float(by), labels)


def clear(name: str) -> Update:
    return Update(name, "clear")


@dataclass(frozen=True)
class Destination:
    """Where metrics go: the Pushgateway when its URL is given, else the textfile."""

    pushgateway_url: str | None
    textfile: Path

    @classmethod
    def from_settings(cls) -> Destination:
        from pulse_pipeline.settings import get_settings

        settings = get_settings()
        assert settings.pulse_metrics_textfile is not None
        url = (settings.pulse_pushgateway_url or "").strip().rstrip("/")
        if url and "://" not in url:
            url = f"http://{url}"  # as prometheus_client reads a bare host:port
        return cls(url or None, settings.pulse_metrics_textfile)

    def describe(self) -> str:
        from pulse_pipeline.core.secrets import mask, url_secrets

        if self.pushgateway_url:
            return f"the Pushgateway at {mask(self.pushgateway_url, url_secrets(self.pushgateway_url))}"
        return f"the textfile {self.textfile}"


# (metric name, sorted label pairs) -> value
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def record(
    family: str, updates: Iterable[Update], destination: Destination | None = None,
    warn: Callable[[str], None] = log.warning,
) -> str | None:  # fmt: skip
    """Apply `updates` to `family`'s series at `destination` (default: from the settings). Never
    raises: a failure is one warning line, given to `warn` and returned (None: delivered)."""
    updates = list(updates)
    try:
        destination = destination or Destination.from_settings()
        for update in updates:
            _check(family, update)
        if destination.pushgateway_url:
            _push(destination.pushgateway_url, family, updates)
        else:
            _write_textfile(destination.textfile, family, updates)
        return None
    except Exception as exc:  # noqa: BLE001 - metrics must never fail the work they describe
        where = destination.describe() if isinstance(destination, Destination) else "metrics"
        why = str(exc) if isinstance(exc, MetricsError) else f"{type(exc).__name__}: {exc}"
        line = f"{family}: metrics not delivered to {where}: {why}"
        warn(line)
        return line


def _check(family: str, update: Update) -> None:
    spec = METRICS.get(update.name)
    if spec is None:
        raise MetricsError(f"{update.name} is not one of core/metrics.py's metrics")
    if update.op != "clear" and set(update.labels) | {"family"} != set(spec.labels):
        raise MetricsError(
            f"{update.name} takes the labels {', '.join(spec.labels)}, not {', '.join(update.labels)}"
        )
    if update.labels.get("family", family) != family:
        raise MetricsError(f"{update.name}: label family={update.labels['family']} in an update of {family}")


def apply(series: Series, family: str, updates: Iterable[Update]) -> Series:
    """`series` with `updates` to `family`'s applied (a new dict)."""
    out = dict(series)
    for update in updates:
        if update.op == "clear":
            for key in [k for k in out if k[0] == update.name and dict(k[1]).get("family") == family]:
                del out[key]
            continue
        key = (update.name, tuple(sorted({**update.labels, "family": family}.items())))
        out[key] = out.get(key, 0.0) + update.value if update.op == "add" else update.value
    return out


def parse(text: str, keep: Callable[[dict[str, str]], bool] = lambda _: True) -> Series:
    """The samples of metrics this module defines in Prometheus text `text` whose labels `keep`
    accepts; the Pushgateway's `job` label and an empty `instance` are left out."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Series = {}
    for metric_family in text_string_to_metric_families(text):
        for sample in metric_family.samples:
            if sample.name not in METRICS or not keep(sample.labels):
                continue
            labels = {
                k: v for k, v in sample.labels.items() if k != "job" and not (k == "instance" and not v)
            }
            out[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return out


def render(series: Series, names: Iterable[str] | None = None) -> bytes:
    """Prometheus text exposition of `series` (only the metrics `names`, default all), built in a
    fresh CollectorRegistry."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(series, set(names) if names is not None else set(METRICS)))
    return generate_latest(registry)


class _Snapshot:
    """A collector that exposes fixed values (the merged series), not live instruments."""

    def __init__(self, series: Series, names: set[str]):
        self.series, self.names = series, names

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for spec in METRICS.values():
            if spec.name not in self.names:
                continue
            kind = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
            metric = kind(spec.name, spec.help, labels=list(spec.labels))
            for (name, labels), value in sorted(self.series.items()):
                if name == spec.name:
                    values = dict(labels)
                    metric.add_metric([values.get(label, "") for label in spec.labels], value)
            yield metric


def _write_textfile(path: Path, family: str, updates: list[Update]) -> None:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # read, change, write back: no other writer in between
        try:
            text = path.read_text(encoding="utf-8") if path.exists() else ""
            existing = parse(text)
        except (OSError, ValueError) as exc:
            raise MetricsError(f"cannot read the existing {path} (left as it is): {exc}") from None
        body = render(apply(existing, family, updates))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)  # node-exporter often runs as another user
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _push(url: str, family: str, updates: list[Update]) -> None:
    import httpx
    from prometheus_client import pushadd_to_gateway

    response = httpx.get(f"{url}/metrics", timeout=PUSH_TIMEOUT_S)
    if response.status_code != 200:
        raise MetricsError(f"GET /metrics answered HTTP {response.status_code}")
    group = parse(response.text, lambda labels: labels.get("job") == JOB and labels.get("family") == family)
    names = {u.name for u in updates}  # pushadd replaces these names in the group, and only these
    merged = {k: v for k, v in apply(group, family, updates).items() if k[0] in names}

    def handler(
        url: str, method: str, timeout: float | None, headers: list, data: bytes
    ) -> Callable[[], None]:
        def send() -> None:
            answer = httpx.request(method, url, content=data, headers=dict(headers), timeout=timeout)
            if answer.status_code >= 300:
                raise MetricsError(
                    f"{method} answered HTTP {answer.status_code}: {answer.text.strip()[:200]}"
                )

        return send

    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(merged, names))
    pushadd_to_gateway(
        url,
        job=JOB,
        registry=registry,
        grouping_key={"family": family},
        timeout=PUSH_TIMEOUT_S,
        handler=handler,
    )


# What the pipeline records, one function per moment.


def gpu_memory_percent() -> float | None:
    """Peak CUDA memory reserved by this process, percent of the device's; None without CUDA (or
    when torch was never imported: nothing ran on a GPU)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return 100.0 * torch.cuda.max_memory_reserved() / total if total else None


class TrainingMetrics:
    """One training's metrics: the live loss (at most every LIVE_LOSS_INTERVAL_S) and the end."""

    def __init__(self, family: str, destination: Destination | None = None):
        self.family = family
        self.destination = destination
        self.started = time.monotonic()
        self._last_push = self.started
        self._live = True  # a failed live push stops the live pushes: the end is still reported

    def follow(self, on_progress: Callable[[Any], None] | None) -> Callable[[Any], None]:
        """`on_progress` (a recipe.Progress callback) that also reports the loss now and then."""

        def progress(p: Any) -> None:
            if on_progress is not None:
                on_progress(p)
            now = time.monotonic()
            if self._live and now - self._last_push >= LIVE_LOSS_INTERVAL_S and math.isfinite(p.loss):
                self._last_push = now
                self._live = (
                    record(self.family, [gauge("training_loss_current", p.loss)], self.destination) is None
                )

        return progress

    def succeeded(self, loss: float | None) -> str | None:
        return self._end("success", loss)

    def failed(self) -> str | None:
        return self._end("failed", None)

    def _end(self, status: str, loss: float | None) -> str | None:
        updates = [
            increment("training_jobs_total", status=status),
            gauge("training_duration_seconds", time.monotonic() - self.started),
            clear("gpu_memory_utilization_percent"),
        ]
        gpu = gpu_memory_percent()
        if gpu is not None:
            updates.append(gauge("gpu_memory_utilization_percent", gpu))
        if loss is not None:
            updates.append(gauge("training_loss_current", loss))
        return record(self.family, updates, self.destination)


def record_evaluation(
    family: str, metrics: Mapping[str, Mapping[str, float]], decision: str, *,
    destination: Destination | None = None, warn: Callable[[str], None] = log.warning,
) -> str | None:  # fmt: skip
    """An evaluation's candidate values, `metrics[set][metric]`, replacing the family's previous ones."""
    updates = [clear("evaluation_metric_value"), increment("evaluations_total", decision=decision)]
    updates += [
        gauge("evaluation_metric_value", float(value), metric=f"{set_name}/{metric}")
        for set_name, values in metrics.items()
        for metric, value in sorted(values.items())
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    return record(family, updates, destination, warn)


def record_promotion(
    family: str, action: str, *, changed: bool = True, partial: bool = False,
    destination: Destination | None = None, warn: Callable[[str], None] = log.warning,
) -> str | None:  # fmt: skip
    """A promotion's outcome: the registry's action, `unchanged` when nothing moved, `partial` when
    a vLLM replica failed and nothing moved (a rollback too), `failed` for an error; or, for a
    rollback that moved production, a rollback."""
    if partial:
        return record(family, [increment("promotions_total", outcome="partial")], destination, warn)
    if action == "rollback":
        if not changed:
            return None
        return record(family, [increment("rollbacks_total")], destination, warn)
    outcome = action if changed else "unchanged"
    return record(family, [increment("promotions_total", outcome=outcome)], destination, warn)


def record_sensor_tick(
    family: str, sensor: str, backlog: int, oldest_waiting_age_s: float | None, *,
    destination: Destination | None = None, warn: Callable[[str], None] = log.warning,
) -> str | None:  # fmt: skip
    """A retrain sensor's tick: the backlog, the oldest waiting annotation's age, the tick's time."""
    return record(
        family,
        [
            gauge("annotation_backlog", backlog),
            gauge("sensor_lag_seconds", max(0.0, oldest_waiting_age_s or 0.0), sensor=sensor),
            gauge("sensor_last_tick_timestamp_seconds", time.time(), sensor=sensor),
        ],
        destination,
        warn,
    )
