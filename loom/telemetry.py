"""Telemetry: the engine's OpenTelemetry tracer and instruments, trace-context carriers, and
the fields every log line carries (workflow, activity, attempt, trace and span ids).

Only `opentelemetry-api` is imported here: until the application (or `loom worker
--metrics-port`) installs an SDK, every span and instrument is a no-op. Knows nothing of
workflows beyond the names it is handed.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import _internal as _metrics_internal
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, Status, StatusCode, TraceFlags

from loom._json import JSON

__all__ = [
    "LOG_FIELDS",
    "LogContextFilter",
    "context_from_env",
    "context_of",
    "current_carrier",
    "export_traces_from_env",
    "is_enabled",
    "json_log_handler",
    "log_context",
    "note_backlog",
    "note_error",
    "serve_metrics",
    "tracer",
    "workflow_context",
]

METER = metrics.get_meter("loom")

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
"""Histogram bounds in seconds (Prometheus' defaults, stretched to hour-long workflows)."""

# Prometheus names: the exporter adds `_total` to counters and the unit to histograms.
WORKFLOW_STARTED = METER.create_counter(
    "loom_workflow_started", unit="1", description="Workflows whose first task ran."
)
WORKFLOW_COMPLETED = METER.create_counter(
    "loom_workflow_completed", unit="1", description="Workflows that completed."
)
WORKFLOW_FAILED = METER.create_counter(
    "loom_workflow_failed", unit="1", description="Workflows that failed."
)
WORKFLOW_DURATION = METER.create_histogram(
    "loom_workflow_duration",
    unit="s",
    description="Start to close of workflows that completed or failed.",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
ACTIVITY_DURATION = METER.create_histogram(
    "loom_activity_duration",
    unit="s",
    description="One activity attempt, by activity and outcome (completed, failed, retried).",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
ACTIVITY_SCHEDULE_TO_START = METER.create_histogram(
    "loom_activity_schedule_to_start",
    unit="s",
    description="From scheduling an activity to its first attempt starting.",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
WASM_FUEL_USED = METER.create_counter(
    "loom_wasm_fuel_used", unit="1", description="Fuel charged to metered WebAssembly calls."
)

_backlog: dict[str, int] = {}


def _observe_backlog(options: metrics.CallbackOptions) -> Iterator[metrics.Observation]:
    for kind, count in list(_backlog.items()):
        yield metrics.Observation(count, {"kind": kind})


TASK_BACKLOG = METER.create_observable_gauge(
    "loom_task_backlog",
    callbacks=[_observe_backlog],
    unit="1",
    description="Tasks in the store by state (queued, leased, expired), as a worker last saw.",
)


def note_backlog(counts: Mapping[str, int]) -> None:
    """Record the store's task counts for the next scrape (a worker's heartbeat calls it)."""
    _backlog.update(counts)


LOG_FIELDS = (
    "workflow_id",
    "workflow_name",
    "activity",
    "attempt",
    "trace_id",
    "span_id",
)
"""The fields `loom worker --log-format json` adds to every line (None when not known)."""

_log_fields: contextvars.ContextVar[Mapping[str, JSON] | None] = contextvars.ContextVar(
    "loom_log_fields", default=None
)


def _is_sdk(provider: object) -> bool:
    # The API's own providers are the proxy (before any is set) and the no-op one.
    return "Proxy" not in type(provider).__name__ and "NoOp" not in type(provider).__name__


_PROVIDERS_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ or (
    "OTEL_PYTHON_METER_PROVIDER" in os.environ
)


def is_enabled() -> bool:
    """Whether an SDK tracer or meter provider is installed: the engine then spends the
    few microseconds a carrier or a timestamp costs, and nothing otherwise.

    Called several times per task, so it reads the API's provider globals directly:
    `get_tracer_provider()` looks the environment up on every call (5% of throughput)."""
    if _PROVIDERS_FROM_ENV:  # the API would load these lazily: ask it
        return _is_sdk(trace.get_tracer_provider()) or _is_sdk(metrics.get_meter_provider())
    traced = getattr(trace, "_TRACER_PROVIDER", None)
    metered = getattr(_metrics_internal, "_METER_PROVIDER", None)
    return (traced is not None and _is_sdk(traced)) or (metered is not None and _is_sdk(metered))


_tracers: dict[int, tuple[trace.TracerProvider, trace.Tracer]] = {}


def tracer() -> trace.Tracer:
    """The engine's tracer from the provider installed now: one cached at import would keep
    a replaced provider's, and asking the SDK for a new one per span costs ~10 us."""
    provider = trace.get_tracer_provider()
    cached = _tracers.get(id(provider))
    if cached is None or cached[0] is not provider:
        _tracers.clear()
        cached = _tracers[id(provider)] = (provider, provider.get_tracer("loom"))
    return cached[1]


def current_carrier() -> dict[str, str] | None:
    """The current span's W3C trace context (`traceparent`, maybe `tracestate`), to store."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def context_of(carrier: JSON) -> otel_context.Context | None:
    """The context a stored carrier names (None: a root span, as without a caller's trace)."""
    if not isinstance(carrier, dict) or not carrier:
        return None
    return _extracted(tuple(sorted((str(k), str(v)) for k, v in carrier.items())))


def workflow_context(workflow_id: str) -> otel_context.Context:
    """The parent of a workflow's spans when its starter had no trace: a remote span whose
    trace id is derived from the workflow id, so every task on any worker shares one trace."""
    digest = hashlib.sha256(workflow_id.encode()).digest()
    parent = SpanContext(
        trace_id=int.from_bytes(digest[:16], "big") or 1,
        span_id=int.from_bytes(digest[16:24], "big") or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


@functools.lru_cache(maxsize=4096)
def _extracted(carrier: tuple[tuple[str, str], ...]) -> otel_context.Context:
    # Every task of a workflow names the same parent: parse it once (contexts are immutable).
    return propagate.extract(dict(carrier))


@contextlib.contextmanager
def context_from_env() -> Iterator[None]:
    """Make the `TRACEPARENT`/`TRACESTATE` environment variables (the convention of CLI
    tracers and CI systems) the current trace context, if set."""
    carrier = {
        key.lower(): os.environ[key] for key in ("TRACEPARENT", "TRACESTATE") if key in os.environ
    }
    if not carrier:
        yield
        return
    token = otel_context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


def note_error(err: BaseException, span: Span | None = None) -> None:
    """Mark `span` (default: the current one) failed with `error.type`, never the message:
    messages may repeat inputs."""
    span = span or trace.get_current_span()
    if span.is_recording():
        span.set_attribute("error.type", str(getattr(err, "error_type", type(err).__name__)))
        span.set_status(Status(StatusCode.ERROR))


# -- logs -------------------------------------------------------------------------------


class log_context:  # used as a function: `with log_context(...):`
    """Attach `fields` to every log line written in this context (this asyncio task).

    A class, not a generator: the worker enters one per task (a third of the cost)."""

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: JSON) -> None:
        self._fields = fields
        self._token: contextvars.Token[Mapping[str, JSON] | None] | None = None

    def __enter__(self) -> None:
        outer = _log_fields.get()
        self._token = _log_fields.set({**outer, **self._fields} if outer else self._fields)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _log_fields.reset(self._token)


class LogContextFilter(logging.Filter):
    """Adds LOG_FIELDS to each record: from `log_context`, the record's own `extra`, and
    the current span."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _log_fields.get() or {}
        for name in LOG_FIELDS[:4]:
            if not hasattr(record, name):
                setattr(record, name, fields.get(name))
        span = trace.get_current_span().get_span_context()
        record.trace_id = format(span.trace_id, "032x") if span.is_valid else None
        record.span_id = format(span.span_id, "016x") if span.is_valid else None
        return True


def json_log_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing one JSON object per line with `timestamp`, `level`, `logger`,
    `message` and LOG_FIELDS (python-json-logger, the stdlib formatter's JSON twin)."""
    from pythonjsonlogger.json import JsonFormatter

    handler = logging.StreamHandler(stream)
    handler.addFilter(LogContextFilter())
    handler.setFormatter(
        JsonFormatter(
            ["asctime", "levelname", "name", "message", *LOG_FIELDS],
            rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    return handler


# -- exporters -------------------------------------------------------------------------


def export_traces_from_env() -> bool:
    """Install an SDK tracer provider exporting over OTLP/HTTP when the standard
    `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set and loom[otel] is
    installed, unless the application installed a provider itself. Returns whether it did."""
    if _is_sdk(trace.get_tracer_provider()) or not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as err:
        raise RuntimeError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but {err.name} is missing; install the "
            "exporter with: pip install 'loom[otel]'"
        ) from err
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True


# -- metrics endpoint -------------------------------------------------------------------


def serve_metrics(port: int, host: str = "127.0.0.1") -> Any:
    """Serve this process's instruments as Prometheus text on http://host:port/metrics.

    Installs an SDK meter provider with the OpenTelemetry Prometheus exporter (unless the
    application installed one, whose readers then decide what is served). Returns the
    server; needs `pip install 'loom[otel]'`.
    """
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import start_http_server
    except ImportError as err:
        raise RuntimeError(
            f"--metrics-port needs the OpenTelemetry SDK and Prometheus exporter ({err.name} "
            "is missing); install them with: pip install 'loom[otel]'"
        ) from err
    if not _is_sdk(metrics.get_meter_provider()):
        metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    server, _ = start_http_server(port, addr=host)
    return server
