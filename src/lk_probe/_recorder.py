"""The production :class:`~lk_probe._sink.PhaseSink`: phases become OTel spans, read from the catalogue.

A Recorder holds the open phase instances of one job (or one plain ``Room``). Each span gets ``lk_probe.phase``, the
recorder's common attributes (job id, …), explicit start/end times, ERROR status with ``error.type`` on failure, and
feeds the per-phase duration histogram and outcome counter. While a phase with a budget stays open, the watchdog
thread exports a ``stall`` record (span + WARNING log) as soon as the budget is crossed, and again at 2×, 4×, 8×….
The watchdog sleeps until the next such deadline (or a held span's timeout): with nothing due it costs nothing.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Hashable

import wrapt
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from . import _catalogue as c
from . import _journal, _loopblock, _provider
from ._errors import guard, guarded
from ._redact import clean, clean_attributes

log = logging.getLogger("lk_probe")


@dataclass
class _Open:
    phase: str
    span: Span
    ctx: Any
    start_ns: int
    start_mono: float
    budget: float | None
    next_stall: float | None  # seconds since start at which the next stall record is due
    stalls: int = 0
    inferred_from: str | None = None  # set for a phase whose boundaries were inferred, not logged


_metrics_lock = threading.Lock()
_instruments: dict[str, Any] = {}


def _metrics():
    with _metrics_lock:
        if not _instruments:
            from opentelemetry import metrics

            meter = metrics.get_meter("lk_probe")
            _instruments["duration"] = meter.create_histogram(
                c.METRIC_PHASE_DURATION, unit="s", description="Duration of lk_probe phases")
            _instruments["outcome"] = meter.create_counter(
                c.METRIC_PHASE_OUTCOME, description="Ended lk_probe phases by outcome")
        return _instruments


class Recorder:
    MAX_OPEN = 256

    def __init__(self, default_parent: Any = None, *, attributes: dict[str, Any] | None = None,
                 label: str = "") -> None:
        self._lock = threading.RLock()
        self._open: dict[Hashable, _Open] = {}
        self._default_parent = default_parent
        self.attributes = clean_attributes(attributes)
        self.label = label  # e.g. the job id, for stall log lines

    # ---------------------------------------------------------------- PhaseSink
    @guarded("recorder.start")
    def start(self, phase: str, key: Hashable, *, t: int | None = None, parent: Hashable | None = None,
              attributes: dict[str, Any] | None = None, context: Any = None,
              links: Any = None) -> Span | None:
        p = c.phase(phase)
        t = t if t is not None else time.time_ns()
        with self._lock:
            if key in self._open or len(self._open) >= self.MAX_OPEN:
                return None
            if context is not None:
                ctx = context
            elif parent is not None and parent in self._open:
                ctx = self._open[parent].ctx
            else:
                ctx = self._default_parent
            attrs = {c.PHASE: phase, **self.attributes, **clean_attributes(attributes)}
            tracer = _provider.tracer()
            span = tracer.start_span(phase, context=ctx, kind=p.kind, attributes=attrs, start_time=t, links=links)
            budget = c.budget(phase)
            lag = (time.time_ns() - t) / 1e9
            o = self._open[key] = _Open(phase, span, trace.set_span_in_context(span), t,
                                        time.monotonic() - max(lag, 0), budget, budget,
                                        inferred_from=_inferred_from(attrs))
            # a phase lk_probe does not trace (inside suppress_instrumentation(), or after uninstall) has no stall
            if budget and _watchdog.enabled and not isinstance(tracer, trace.NoOpTracer):
                _watchdog.arm(o.start_mono + budget, self, o)
        return span

    @guarded("recorder.end")
    def end(self, key: Hashable, *, t: int | None = None, error_type: str | None = None,
            error_message: str | None = None, attributes: dict[str, Any] | None = None) -> None:
        with self._lock:
            o = self._open.pop(key, None)
            if o is not None:
                o.next_stall = None  # the watchdog's deadline for it, if any, is void
        if o is None:
            return
        self._finish(o, t if t is not None else time.time_ns(), error_type, error_message, attributes)

    @guarded("recorder.event")
    def event(self, key: Hashable | None, name: str, *, t: int | None = None,
              attributes: dict[str, Any] | None = None) -> None:
        with self._lock:
            o = self._open.get(key) if key is not None else None
            if o is None and self._open:
                o = next(reversed(self._open.values()))
        span = o.span if o is not None else trace.get_current_span(self._default_parent)
        t = t if t is not None else time.time_ns()
        holder = None
        if not span.is_recording():
            # nothing open to carry it (a watchdog line or a Leave while simply connected): a zero-length span of
            # its own under the default parent, rather than dropping it
            holder = span = _provider.tracer().start_span(
                "event", context=self._default_parent, kind=c.phase("event").kind, start_time=t,
                attributes={c.PHASE: "event", **self.attributes, c.EVENT: name})
        attrs = clean_attributes(attributes)
        if name == c.EV_WATCHDOG:
            attrs.update(_loopblock.watchdog_seen(t, span, attrs.get(c.WATCHDOG_TASK, ""),
                                                  attrs.get(c.WATCHDOG_MESSAGE_KIND)))
        span.add_event(name, attrs, timestamp=t)
        j = _journal.active
        if j is not None and holder is None:
            j.event(span, name, t, attrs)
        if holder is not None:
            holder.end(end_time=t)

    # ---------------------------------------------------------------- helpers
    def set_default_parent(self, ctx: Any) -> None:
        self._default_parent = ctx

    @property
    def default_parent(self) -> Any:
        return self._default_parent

    def context(self, key: Hashable) -> Any:
        with self._lock:
            o = self._open.get(key)
        return o.ctx if o is not None else None

    def span(self, key: Hashable) -> Span | None:
        with self._lock:
            o = self._open.get(key)
        return o.span if o is not None else None

    def is_open(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._open

    def open_phases(self) -> list[tuple[Hashable, str, int]]:
        with self._lock:
            return [(k, o.phase, o.start_ns) for k, o in self._open.items()]

    def set_attributes(self, key: Hashable, attributes: dict[str, Any]) -> None:
        with guard("recorder.set_attributes"):
            with self._lock:
                o = self._open.get(key)
            if o is not None:
                attrs = clean_attributes(attributes)
                o.span.set_attributes(attrs)
                o.inferred_from = _inferred_from(attrs) or o.inferred_from
                j = _journal.active
                if j is not None:
                    j.attributes(o.span, attrs)

    def close_all(self, *, t: int | None = None, error_type: str | None = None, error_message: str | None = None,
                  attributes: dict[str, Any] | None = None) -> None:
        """End every open phase, innermost first (job end, process death)."""
        with self._lock:
            items = list(self._open.items())
            self._open.clear()
            for _, o in items:
                o.next_stall = None
        t = t if t is not None else time.time_ns()
        for _, o in reversed(items):
            with guard("recorder.close_all"):
                self._finish(o, t, error_type, error_message, attributes)

    def _finish(self, o: _Open, t: int, error_type: str | None, error_message: str | None,
                attributes: dict[str, Any] | None) -> None:
        span = o.span
        outcome = "error" if error_type else "ok"
        attrs = clean_attributes(attributes)
        if error_type:
            attrs[c.ERROR_TYPE] = error_type
        attrs.setdefault(c.OUTCOME, outcome)
        span.set_attributes(attrs)
        if error_type:
            inferred = _inferred_from(attrs) or o.inferred_from
            message = clean(error_message or error_type)
            # an inferred phase says so where every UI shows it, next to the error
            span.set_status(Status(StatusCode.ERROR, f"{message} (inferred: {inferred})" if inferred else message))
        holds.end(span, max(t, o.start_ns))
        with guard("recorder.metrics"):
            m = _metrics()
            labels = {c.PHASE: o.phase, c.OUTCOME: attrs[c.OUTCOME]}
            m["duration"].record(max(t - o.start_ns, 0) / 1e9, labels)
            m["outcome"].add(1, labels)

    # ---------------------------------------------------------------- stalls
    def _stall_due(self, o: _Open, now_mono: float) -> float | None:
        """The watchdog's deadline for ``o`` came: if it is still open and past its next stall, count the stall, arm
        the next one (2× the last) and return the elapsed time; else None."""
        with self._lock:
            if o.next_stall is None:  # ended
                return None
            elapsed = now_mono - o.start_mono
            if elapsed >= o.next_stall:
                o.stalls += 1
                o.next_stall = o.budget * (2 ** o.stalls) if o.budget else None
            else:
                elapsed = None
            if o.next_stall is not None:
                _watchdog.arm(o.start_mono + o.next_stall, self, o)
        return elapsed


def _inferred_from(attrs: dict[str, Any]) -> str | None:
    if not attrs.get(c.INFERRED):
        return None
    return str(attrs.get(c.INFERRED_FROM) or "records around it")


def stall_span_name(phase: str) -> str:
    """The name of a stall record's span: which phase stalled, in a form with one value per phase."""
    return f"stall {phase}"


def emit_stall(rec: Recorder, o: _Open, elapsed: float) -> None:
    """A stall record: a span under the stalled phase covering the time it has been open so far, so a waterfall
    draws a bar as long as the stall, exported at once while the phase itself is still open."""
    now = time.time_ns()
    attrs = {c.PHASE: "stall", **rec.attributes, c.STALL_PHASE: o.phase, c.STALL_ELAPSED: round(elapsed, 3),
             c.STALL_BUDGET: o.budget or 0.0, c.STALL_COUNT: o.stalls}
    start = min(o.start_ns, now)
    s = _provider.tracer().start_span(stall_span_name(o.phase), context=o.ctx, kind=c.phase("stall").kind,
                                      attributes=attrs, start_time=start)
    s.end(end_time=now)
    log.warning("lk_probe: phase %s%s still open after %.1fs (budget %.1fs)", o.phase,
                f" of job {rec.label}" if rec.label else "", elapsed, o.budget or 0.0)


class _Holds:
    """Span ends deferred for a short enrichment read after the phase ended (the ICE pair read after connect).

    The span keeps the end time it was given; only the call to ``span.end`` waits, for at most the hold's timeout,
    so attributes read off the critical path can still land on it. Works for any SDK span (agents' own
    ``room_connect`` goes through :class:`HoldableSpan`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, list[Any]] = {}  # id(span) -> [span, deadline (monotonic), end time or None]

    def hold(self, span: Any, timeout: float) -> None:
        span = getattr(span, "__wrapped__", span)
        deadline = time.monotonic() + timeout
        with self._lock:
            self._items[id(span)] = [span, deadline, None]
        _watchdog.arm(deadline)

    def end(self, span: Any, end_time: int | None = None) -> None:
        with self._lock:
            h = self._items.get(id(span))
            if h is not None and h[0] is span:
                h[2] = end_time if end_time is not None else time.time_ns()
                return
        span.end(end_time=end_time)

    def release(self, span: Any, attributes: dict[str, Any] | None = None) -> None:
        span = getattr(span, "__wrapped__", span)
        with self._lock:
            h = self._items.pop(id(span), None)
        with guard("recorder.release"):
            attrs = clean_attributes(attributes)
            if attrs and span.is_recording():
                span.set_attributes(attrs)
                j = _journal.active
                if j is not None:
                    j.attributes(span, attrs)
        if h is not None and h[2] is not None:
            span.end(end_time=h[2])

    def expire(self, now_mono: float | None = None) -> None:
        """Release every hold past its deadline (``now_mono=None``: all of them, at uninstall)."""
        with self._lock:
            due = [h[0] for h in self._items.values() if now_mono is None or h[1] <= now_mono]
        for span in due:
            self.release(span)

    def __len__(self) -> int:
        return len(self._items)


holds = _Holds()


class HoldableSpan(wrapt.ObjectProxy):  # type: ignore[misc]
    """A span someone else ends (livekit-agents' ``room_connect``) whose end can be held like ours."""

    def end(self, end_time: int | None = None) -> None:
        holds.end(self.__wrapped__, end_time)


class _Watchdog:
    """One daemon thread per process, started with the first deadline (never at import).

    Deadlines are a heap of (monotonic time, sequence, phase, recorder) with the phase and recorder held weakly; a held
    span's timeout is a deadline with neither. The thread sleeps until the earliest deadline, and for as long as there
    is none: no polling while nothing has a budget open. A phase that ended leaves its deadline behind, void; void
    deadlines at the head of the heap are dropped before the thread sleeps.
    """

    def __init__(self) -> None:
        self.enabled = True  # stall records (the option); held spans expire either way
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Any, Any]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread now (a job process's prewarm) rather than with the first deadline."""
        with self._cond:
            self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lk_probe-watchdog", daemon=True)
            self._thread.start()

    def arm(self, when: float, rec: Recorder | None = None, o: _Open | None = None) -> None:
        entry = (when, next(self._seq), weakref.ref(o) if o is not None else None,
                 weakref.ref(rec) if rec is not None else None)
        with self._cond:
            heapq.heappush(self._heap, entry)
            self._start()
            if self._heap[0] is entry:  # earlier than what the thread sleeps for
                self._cond.notify()

    def _drop_void(self) -> None:
        """Drop the deadlines at the head of the heap that nobody waits for any more (a phase that ended, a hold
        released): a burst of short phases then costs one wake-up, not one per phase."""
        heap = self._heap
        while heap:
            oref = heap[0][2]
            if oref is None:
                if len(holds):
                    return
            else:
                o = oref()
                if o is not None and o.next_stall is not None and self.enabled:
                    return
            heapq.heappop(heap)

    def _next(self) -> tuple[float, list[tuple[float, int, Any, Any]]]:
        with self._cond:
            while True:
                self._drop_void()
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    break
                self._cond.wait(self._heap[0][0] - now if self._heap else None)
            due = []
            while self._heap and self._heap[0][0] <= now:
                due.append(heapq.heappop(self._heap))
        return now, due

    def _run(self) -> None:
        while True:
            now, due = self._next()
            with guard("watchdog"):
                emitted = False
                for _, _, oref, rref in due:
                    if oref is None:
                        holds.expire(now)
                        continue
                    o, rec = oref(), rref()
                    if o is None or rec is None or not self.enabled:
                        continue
                    elapsed = rec._stall_due(o, now)
                    if elapsed is not None:
                        emit_stall(rec, o, elapsed)
                        emitted = True
                if emitted:
                    _provider.flush(1.0)


_watchdog = _Watchdog()


def configure(*, stall_records: bool) -> None:
    """At install: whether open phases past their budget export stall records."""
    _watchdog.enabled = stall_records


def shutdown() -> None:
    """At uninstall: no more stall records, and every held span end is released now."""
    _watchdog.enabled = False
    holds.expire()
