"""The diagnosis in the agent, with no tracing backend: once per job, at its end, off the connect path.

A span processor (:class:`Collector`) keeps the ended spans of the jobs this process is watching — only lk_probe's own
and the two livekit-agents spans the findings read (``room_connect``, ``event_loop_blocked``), as references, no
copies. When the job ends, :func:`conclude` diagnoses them (``lk_probe._findings``). If the job had something to
explain — a join slower than its budget or failed, a reconnect episode that failed, a dead process, an assignment that
never came — the verdict goes

* onto the job's root span (``lk_probe.finding.code`` / ``.summary`` / ``.evidence`` / ``.codes``): the worker owns
  it, so the job process hands its verdict over in the crash journal and the worker sets it before the root ends;
* onto the span it concerns, as a zero-length ``finding`` span under it (that span has ended by then, and an ended
  span cannot take attributes);
* into ONE structured WARNING log line per job (job id, room, the finding, the phase durations that matter);
* into the ``lk_probe.findings`` counter, by code.

A healthy job costs one dict lookup per span end and one pass over its few spans at its end, and logs nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from . import _catalogue as c
from . import _provider
from ._errors import guard
from ._findings import CONNECT_PHASES, Finding, _over_budget, diagnose

log = logging.getLogger("lk_probe")

MAX_SPANS = 4096  # per watched trace
_KEPT_FOREIGN = ("room_connect", "event_loop_blocked")


def _processor_base() -> type:
    from opentelemetry.sdk.trace import SpanProcessor

    return SpanProcessor


class Collector(_processor_base()):  # type: ignore[misc]
    """Keeps the ended spans of watched traces (trace id → spans) until the job's end takes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._traces: dict[int, list[Any]] = {}

    def watch(self, trace_id: int) -> None:
        with self._lock:
            self._traces.setdefault(trace_id, [])
            while len(self._traces) > 1024:  # jobs whose end was never seen
                self._traces.pop(next(iter(self._traces)))

    def take(self, trace_id: int) -> list[Any]:
        with self._lock:
            return self._traces.pop(trace_id, [])

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: Any) -> None:
        try:
            kept = self._traces.get(span.context.trace_id)
            if kept is None or len(kept) >= MAX_SPANS:
                return
            scope = getattr(span, "instrumentation_scope", None)
            if (scope is not None and scope.name == "lk_probe") or span.name in _KEPT_FOREIGN:
                kept.append(span)
        except Exception:  # noqa: BLE001 - never disturb the span pipeline
            pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


collector = Collector()
_attached: set[int] = set()


def attach(provider: Any) -> None:
    """Add the collector to an SDK provider once."""
    if id(provider) in _attached or not hasattr(provider, "add_span_processor"):
        return
    _attached.add(id(provider))
    provider.add_span_processor(collector)


def needs_a_verdict(spans: Any) -> bool:
    """Whether the job had something to explain: a slow or failed join, a failed reconnect episode, a dead
    process, an assignment that never came, a session that never started, a caller's audio that never arrived."""
    for s in spans:
        if s.phase in CONNECT_PHASES and (s.error or _over_budget(s)):
            return True
        if s.phase == "rtc.attempt" and s.error:  # the join needed another attempt (or failed)
            return True
        if s.phase == "rtc.reconnect" and s.error:
            return True
        if s.phase == "job.process" and s.attributes.get(c.OUTCOME) in ("killed", "failed"):
            return True
        if s.phase == "job.assignment" and s.attributes.get(c.ERROR_TYPE) == "assignment_timeout":
            return True
        if s.phase in ("session.start", "media.subscribe", "media.first_audio") and s.error:
            return True
    return False


def root_attributes(findings: list[Finding]) -> dict[str, Any]:
    f = findings[0]
    return {c.FINDING_CODE: f.code, c.FINDING_SUMMARY: f.summary, c.FINDING_EVIDENCE: f.evidence,
            c.FINDING_CODES: ",".join(x.code for x in findings)}


def conclude(trace_id: int, *, job_id: str, room: str | None, livekit_version: str | None) -> list[Finding]:
    """The job ended: diagnose what was collected for its trace. With something to explain, emit the ``finding``
    spans, the one WARNING line and the counts; return the findings (for the root span). Else return []."""
    from .spans import SpanSet

    spans = SpanSet(collector.take(trace_id))
    if not needs_a_verdict(spans):
        return []
    findings = diagnose(spans, livekit_version=livekit_version or _loaded_rtc_version())
    if not findings:
        return []
    with guard("verdict.spans"):
        _emit_spans(spans, findings)
    with guard("verdict.log"):
        _log(job_id, room, findings)
    with guard("verdict.metric"):
        _count(findings)
    return findings


def _loaded_rtc_version() -> str | None:
    """The livekit (rtc) version of this environment, if livekit.rtc is loaded (the worker's is the job's)."""
    import sys

    return getattr(sys.modules.get("livekit.rtc"), "__version__", None)


def _emit_spans(spans: Any, findings: list[Finding]) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    tracer = _provider.tracer()
    for f in findings:
        if f.span_id is None:
            continue
        about = spans.by_id(f.span_id)
        parent = trace.set_span_in_context(NonRecordingSpan(SpanContext(
            int(about.trace_id, 16), int(about.span_id, 16), is_remote=False, trace_flags=TraceFlags(1))))
        t = about.end_ns or about.start_ns
        attrs = {c.PHASE: "finding", c.FINDING_CODE: f.code, c.FINDING_SUMMARY: f.summary,
                 c.FINDING_EVIDENCE: f.evidence}
        if c.JOB_ID in about.attributes:
            attrs[c.JOB_ID] = about.attributes[c.JOB_ID]
        s = tracer.start_span("finding", context=parent, kind=c.phase("finding").kind, attributes=attrs,
                              start_time=t)
        s.end(end_time=t)


def _log(job_id: str, room: str | None, findings: list[Finding]) -> None:
    from ._redact import clean

    f = findings[0]
    durations = " ".join(f"{k}={v:.2f}s" for k, v in f.durations.items())
    others = f" (also: {', '.join(x.code for x in findings[1:])})" if len(findings) > 1 else ""
    log.warning("lk_probe: job %s%s: %s — %s Evidence: %s.%s%s", job_id, f" in room {room}" if room else "", f.code,
                f.summary, clean(f.evidence), f" Phases: {durations}." if durations else "", others,
                extra={"lk_probe_job_id": job_id, "lk_probe_room": room, "lk_probe_finding": f.code,
                       "lk_probe_findings": [x.code for x in findings], "lk_probe_durations": dict(f.durations)})


_counter: list[Any] = []


def _count(findings: list[Finding]) -> None:
    if not _counter:
        from opentelemetry import metrics

        _counter.append(metrics.get_meter("lk_probe").create_counter(
            c.METRIC_FINDINGS, description="Jobs diagnosed with a finding, by code"))
    for f in findings:
        _counter[0].add(1, {c.FINDING_CODE: f.code})
