"""Which TracerProvider lk_probe records into, created lazily (never at import: the module is fork-safe).

Order: the provider passed to ``install()``; else the global SDK provider if one is set; else one built from the
standard ``OTEL_*`` variables (OTLP over HTTP or gRPC, service name, resource attributes, sampler). A provider built
here is made global when no global one exists (option ``set_global_provider``), so livekit-agents' own spans, which
go through a proxy of the global provider, land in the same export.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from ._config import Options
from ._errors import guard, warn_once
from ._ids import install_forcing
from .version import __version__

log = logging.getLogger("lk_probe")

_lock = threading.RLock()


@dataclass
class _State:
    explicit: Any = None  # the provider passed to install()
    provider: Any = None  # the provider in use, once chosen
    tracer: Any = None
    built: bool = False  # lk_probe built the provider from OTEL_*
    options: Options = field(default_factory=Options)
    active: bool = False  # installed
    health: list[HealthExporter] = field(default_factory=list)  # the exporters lk_probe built


_state = _State()


def configure(explicit_provider: Any, options: Options) -> None:
    with _lock:
        if explicit_provider is not None and explicit_provider is not _state.explicit:
            _state.provider = _state.tracer = None
        _state.explicit = explicit_provider
        _state.options = options
        _state.active = True


def reset() -> None:
    global _state
    with _lock:
        _state = _State()


def options() -> Options:
    """The options lk_probe was installed with (the defaults when it is not installed)."""
    return _state.options


def current() -> Any:
    """The provider lk_probe records into if it has been chosen already, else None (never builds one)."""
    return _state.provider


def _is_sdk(provider: Any) -> bool:
    return hasattr(provider, "add_span_processor") and hasattr(provider, "force_flush")


def _build_from_env(options: Options):
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "livekit-agent"})
    provider = TracerProvider(resource=resource)
    exporters = [e.strip() for e in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if e.strip()]
    for name in exporters:
        if name == "none":
            continue
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            exporter = _otlp_exporter()
        else:
            warn_once(f"exporter:{name}", "lk_probe: OTEL_TRACES_EXPORTER=%s is not supported by lk_probe's own "
                      "provider (use otlp, console or none, or pass tracer_provider=)", name)
            continue
        if exporter is None:
            continue
        kw: dict[str, Any] = {}
        if not os.environ.get("OTEL_BSP_SCHEDULE_DELAY"):
            kw["schedule_delay_millis"] = options.schedule_delay_ms
        provider.add_span_processor(BatchSpanProcessor(exporter, **kw))
    return provider


class HealthExporter:
    """Wraps the exporter lk_probe builds: remembers whether exports succeed, and says so once when they fail.

    Export runs in the batch processor's thread, never on the event loop; while the exporter is failing, lk_probe's
    own flushes (job end, stall records) shrink to a short bound, so a down or black-holed collector never slows the
    agent. The batch queue is bounded (OTEL_BSP_MAX_QUEUE_SIZE), so memory is too.
    """

    def __init__(self, inner: Any, label: str) -> None:
        self.inner = inner
        self.label = label
        self.healthy = True

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            result = self.inner.export(spans)
        except Exception as e:  # noqa: BLE001 - an exporter bug must not kill the batch thread
            result, err = SpanExportResult.FAILURE, repr(e)
        else:
            err = "the collector did not accept the export"
        ok = result == SpanExportResult.SUCCESS
        if not ok:
            warn_once(f"exporter-down:{self.label}", "lk_probe: exporting spans to %s fails (%s); spans are dropped "
                      "until it recovers, the agent is not slowed", self.label, err)
        self.healthy = ok
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(getattr(self.inner, "force_flush", lambda *_: True)(timeout_millis))


def exporters_healthy() -> bool:
    return all(e.healthy for e in _state.health)


# the exporter builds its session from a credential provider named here: leave it alone then
_CREDENTIAL_PROVIDER_ENV = ("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
                            "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER")


def _http_session() -> Any:
    """The requests session of the OTLP/HTTP exporter lk_probe builds, or None to let the exporter make its own.

    A plain session reads the proxy and CA-bundle environment on every request (requests scans the whole environment
    twice per POST: about a third of an export's CPU); this one reads it once per URL, when the exporter first sends,
    and keeps it for the life of the process. Otherwise it is a plain ``requests.Session`` (connections kept alive).
    """
    if any(os.environ.get(k) for k in _CREDENTIAL_PROVIDER_ENV):
        return None
    try:
        import requests
    except ImportError:
        return None

    class EnvironmentOnceSession(requests.Session):
        def __init__(self) -> None:
            super().__init__()
            self._lk_probe_env: dict[Any, dict[str, Any]] = {}

        def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[no-untyped-def]
            key = (url, stream, verify, cert, tuple(sorted((proxies or {}).items())))
            got = self._lk_probe_env.get(key)
            if got is None:
                got = super().merge_environment_settings(url, dict(proxies) if proxies is not None else None,
                                                         stream, verify, cert)
                if len(self._lk_probe_env) < 16:
                    self._lk_probe_env[key] = got
            return {**got, "proxies": dict(got["proxies"] or {})}

    return EnvironmentOnceSession()


def _otlp_exporter():
    proto = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
             or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    try:
        if proto == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif proto in ("http/protobuf", "http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        else:
            warn_once(f"protocol:{proto}", "lk_probe: OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; use "
                      "http/protobuf or grpc. No spans are exported.", proto)
            return None
    except ImportError as e:
        warn_once("otlp-import", "lk_probe: the OTLP exporter for %s is not installed (%s); no spans are exported",
                  proto, e)
        return None
    session = _http_session() if proto != "grpc" else None
    exporter = OTLPSpanExporter(**({"session": session} if session is not None else {}))
    label = getattr(exporter, "_endpoint", None) or proto
    wrapped = HealthExporter(exporter, str(label))
    _state.health.append(wrapped)
    return wrapped


def provider():
    """The provider lk_probe records into (created on first use)."""
    with _lock:
        if _state.provider is not None:
            return _state.provider
        if not _state.active:  # uninstalled: a late event must not build (and globalise) a provider
            return trace.NoOpTracerProvider()
        opts = _state.options
        chosen = _state.explicit
        if chosen is None:
            glob = trace.get_tracer_provider()
            if _is_sdk(glob):
                chosen = glob
        if chosen is None:
            with guard("provider.build"):
                chosen = _build_from_env(opts)
                _state.built = True
                if opts.set_global_provider and not _is_sdk(trace.get_tracer_provider()):
                    trace.set_tracer_provider(chosen)
        if chosen is None:
            chosen = trace.get_tracer_provider()
        _state.provider = chosen
        return chosen


def suppressed() -> bool:
    """True inside OpenTelemetry's ``suppress_instrumentation()`` context: lk_probe emits no span there."""
    with guard("provider.suppressed"):
        from opentelemetry.instrumentation.utils import is_instrumentation_enabled

        return not is_instrumentation_enabled()
    return False


def tracer():
    if suppressed():
        return trace.NoOpTracer()
    with _lock:
        if not _state.active:
            return trace.NoOpTracer()
        if _state.tracer is None:
            t = provider().get_tracer("lk_probe", __version__)
            install_forcing(t)
            _state.tracer = t
        return _state.tracer


def sampled_root(trace_id: int, name: str = "job") -> bool:
    """Would this provider sample a root span with this trace id? (So both processes decide alike.)"""
    p = provider()
    sampler = getattr(p, "sampler", None)
    if sampler is None:
        return True
    try:
        from opentelemetry.sdk.trace.sampling import Decision

        root = getattr(sampler, "_root", sampler)  # ParentBased delegates roots to _root
        res = root.should_sample(None, trace_id, name)
        return res.decision == Decision.RECORD_AND_SAMPLE
    except Exception:  # noqa: BLE001
        return True


def flush_soon(timeout_s: float | None = None) -> threading.Thread:
    """Flush in a daemon thread of its own and return at once (the thread is returned for tests to join)."""
    th = threading.Thread(target=flush, args=(timeout_s,), name="lk_probe-flush-soon", daemon=True)
    th.start()
    return th


async def flush_async(timeout_s: float | None = None) -> bool:
    """Await a bounded flush without occupying the event loop's default executor."""
    import asyncio

    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def run() -> None:
        ok = flush(timeout_s)
        loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(ok))

    threading.Thread(target=run, name="lk_probe-flush-async", daemon=True).start()
    return await fut


def flush(timeout_s: float | None = None) -> bool:
    """Flush lk_probe's provider; returns within the bound whatever the exporter does (True: all exported)."""
    p = _state.provider
    if p is None or not hasattr(p, "force_flush"):
        return True
    t = timeout_s if timeout_s is not None else _state.options.flush_timeout_s
    if not exporters_healthy():
        t = min(t, 0.2)  # the collector is down: don't make the agent wait for it
    result: list[bool] = []

    def run() -> None:
        try:
            result.append(bool(p.force_flush(int(t * 1000))))
        except Exception as e:  # noqa: BLE001
            warn_once("flush", "lk_probe: flushing spans failed: %r", e)
            result.append(False)

    # the SDK's force_flush can overrun its timeout while an export is stuck on a black-holed collector
    th = threading.Thread(target=run, name="lk_probe-flush", daemon=True)
    th.start()
    th.join(t + 0.05)
    return bool(result and result[0])
