"""Query and assert on finished spans: the objects the ``lk_probe`` pytest fixture and the OTLP receiver hand you.

Every span lk_probe emits is one *phase* of the catalogue (``lk_probe._catalogue``); its name is the phase name.
Spans from the OpenTelemetry SDK (``ReadableSpan``) and spans received over OTLP both become the same plain,
transport-neutral :class:`SpanRecord`, and a :class:`SpanSet` is an immutable, start-ordered sequence of them.

Usage::

    spans = SpanSet(memory_exporter.get_finished_spans())    # or receiver.spans(), or the fixture
    signal = spans.phase("rtc.signal")                        # exactly one, else a readable AssertionError
    assert signal.attributes["lk_probe.signal.path"] == "v1"
    assert signal.duration < 2.0 and not signal.error
    spans.assert_parent("rtc.signal", "rtc.attempt")
    spans.assert_order("rtc.signal", "rtc.join", "rtc.pc")
    spans.assert_single_trace()
    spans.assert_no_duplicates()
    assert [s.attributes["lk_probe.attempt"] for s in spans.phases("rtc.attempt")] == [1, 2]
    assert spans.as_dicts(normalize=True) == [...]             # deterministic, snapshot style

API:

* ``SpanRecord``: ``name``, ``trace_id`` (32 hex), ``span_id`` (16 hex), ``parent_id`` (16 hex or None), ``start_ns``,
  ``end_ns`` (None if unknown), ``kind`` ("INTERNAL", "CLIENT", "SERVER", "PRODUCER", "CONSUMER"), ``status_code``
  ("UNSET", "OK", "ERROR"), ``status_message``, ``attributes``, ``events`` (``SpanEvent(name, t_ns, attributes)``),
  ``links`` (``SpanLink(trace_id, span_id, attributes)``, plain 3-tuples), ``resource``, ``scope``, ``received_ns``
  (set by the OTLP receiver). Properties ``phase``, ``duration``, ``start``, ``end`` (seconds) and ``error``.
  Built with ``SpanRecord.from_readable(span)`` or ``SpanRecord.from_otlp(proto_span, resource_attrs, scope_name)``.
  Attribute sequences are tuples, as in the SDK.
* ``SpanSet(spans)``: accepts SpanRecords or SDK ReadableSpans. Selection: ``phase(name)`` (exactly one),
  ``phases(name)``, ``named(name)``, ``where(mapping, **attrs)``, ``filter(fn)``, ``trace(trace_id)``, ``traces()``.
  Tree: ``by_id(span_id)``, ``parent(span)``, ``children(span)``, ``descendants(span)``, ``roots()`` (spans whose
  parent is not in the set). Assertions: ``assert_order``, ``assert_parent``, ``assert_single_trace``,
  ``assert_no_duplicates``. Export: ``as_dicts(normalize=False, include_resources=False)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, overload

__all__ = ["SpanEvent", "SpanLink", "SpanRecord", "SpanSet"]

from ._catalogue import PHASE as PHASE_ATTRIBUTE  # noqa: E402
from ._catalogue import STALL_COUNT as STALL_COUNT_ATTRIBUTE  # noqa: E402

# OTLP enum values (opentelemetry/proto/trace/v1/trace.proto)
_OTLP_KINDS = {0: "INTERNAL", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_OTLP_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


class SpanEvent(NamedTuple):
    name: str
    t_ns: int
    attributes: dict[str, Any]


class SpanLink(NamedTuple):
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


def _hex_trace(value: int | bytes) -> str:
    return value.hex() if isinstance(value, bytes) else format(value, "032x")


def _hex_span(value: int | bytes) -> str:
    return value.hex() if isinstance(value, bytes) else format(value, "016x")


def _plain(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in (attributes or {}).items()}


def _any_value(value: Any) -> Any:
    """An OTLP AnyValue as a Python value."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return tuple(_any_value(v) for v in value.array_value.values)
    if which == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which)


def _kv(pairs: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in pairs}


@dataclass
class SpanRecord:
    """One finished (or partially known) span, independent of how it was collected."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None = None
    start_ns: int = 0
    end_ns: int | None = None
    kind: str = "INTERNAL"
    status_code: str = "UNSET"
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    links: list[SpanLink] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""
    received_ns: int | None = None  # time.time_ns() when an OTLP receiver got it

    @property
    def phase(self) -> str:
        return self.attributes.get(PHASE_ATTRIBUTE, self.name)

    @property
    def duration(self) -> float | None:
        """Seconds, or None when the end is unknown."""
        return None if self.end_ns is None else (self.end_ns - self.start_ns) / 1e9

    @property
    def start(self) -> float:
        return self.start_ns / 1e9

    @property
    def end(self) -> float | None:
        return None if self.end_ns is None else self.end_ns / 1e9

    @property
    def error(self) -> bool:
        return self.status_code == "ERROR"

    def __repr__(self) -> str:
        dur = "open" if self.end_ns is None else f"{(self.end_ns - self.start_ns) / 1e6:.1f}ms"
        err = " ERROR" if self.error else ""
        return f"<SpanRecord {self.name!r} {dur}{err} span_id={self.span_id} parent_id={self.parent_id}>"

    @classmethod
    def from_readable(cls, span: Any) -> SpanRecord:
        """From an SDK ``ReadableSpan`` (what ``InMemorySpanExporter`` and span processors see)."""
        ctx = span.context
        parent = span.parent
        scope = getattr(span, "instrumentation_scope", None)
        return cls(
            name=span.name,
            trace_id=_hex_trace(ctx.trace_id),
            span_id=_hex_span(ctx.span_id),
            parent_id=_hex_span(parent.span_id) if parent is not None and parent.span_id else None,
            start_ns=span.start_time or 0,
            end_ns=span.end_time,
            kind=span.kind.name,
            status_code=span.status.status_code.name,
            status_message=span.status.description or "",
            attributes=_plain(span.attributes),
            events=[SpanEvent(e.name, e.timestamp, _plain(e.attributes)) for e in span.events],
            links=[
                SpanLink(_hex_trace(link.context.trace_id), _hex_span(link.context.span_id), _plain(link.attributes))
                for link in span.links
            ],
            resource=_plain(span.resource.attributes) if span.resource is not None else {},
            scope=scope.name if scope is not None else "",
        )

    @classmethod
    def from_otlp(cls, span: Any, resource_attrs: Mapping[str, Any] | None = None, scope_name: str = "") -> SpanRecord:
        """From an OTLP protobuf ``opentelemetry.proto.trace.v1.trace_pb2.Span``.

        ``resource_attrs`` is the resource as a plain dict (or the protobuf ``KeyValue`` list).
        """
        if resource_attrs is not None and not isinstance(resource_attrs, Mapping):
            resource_attrs = _kv(resource_attrs)
        parent = span.parent_span_id
        return cls(
            name=span.name,
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_id=parent.hex() if parent and any(parent) else None,
            start_ns=span.start_time_unix_nano,
            end_ns=span.end_time_unix_nano or None,
            kind=_OTLP_KINDS.get(span.kind, "INTERNAL"),
            status_code=_OTLP_STATUS.get(span.status.code, "UNSET"),
            status_message=span.status.message,
            attributes=_kv(span.attributes),
            events=[SpanEvent(e.name, e.time_unix_nano, _kv(e.attributes)) for e in span.events],
            links=[SpanLink(link.trace_id.hex(), link.span_id.hex(), _kv(link.attributes)) for link in span.links],
            resource=dict(resource_attrs or {}),
            scope=scope_name,
        )


def _sort_key(span: SpanRecord) -> tuple[int, int, str]:
    # start time; on a tie the longer span (usually the parent) first, then by name
    end = span.end_ns if span.end_ns is not None else 2**63
    return (span.start_ns, -end, span.name)


class SpanSet(Sequence[SpanRecord]):
    """An immutable sequence of spans ordered by start time (ties: longer span first, then name)."""

    def __init__(self, spans: Iterable[Any] = ()) -> None:
        records = [s if isinstance(s, SpanRecord) else SpanRecord.from_readable(s) for s in spans]
        self._spans: tuple[SpanRecord, ...] = tuple(sorted(records, key=_sort_key))

    # -- Sequence ---------------------------------------------------------------------------------
    @overload
    def __getitem__(self, index: int) -> SpanRecord: ...
    @overload
    def __getitem__(self, index: slice) -> SpanSet: ...
    def __getitem__(self, index: int | slice) -> SpanRecord | SpanSet:
        if isinstance(index, slice):
            return SpanSet(self._spans[index])
        return self._spans[index]

    def __len__(self) -> int:
        return len(self._spans)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SpanSet):
            return self._spans == other._spans
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        names = [s.name for s in self._spans[:6]]
        more = ", …" if len(self._spans) > 6 else ""
        ntraces = len({s.trace_id for s in self._spans})
        return f"<SpanSet {len(self)} spans, {ntraces} trace(s): {', '.join(names)}{more}>"

    # -- selection ----------------------------------------------------------------------------------
    def filter(self, fn: Callable[[SpanRecord], bool]) -> SpanSet:
        return SpanSet(s for s in self._spans if fn(s))

    def phases(self, name: str) -> SpanSet:
        """All spans of a phase (the ``lk_probe.phase`` attribute, else the span name)."""
        return self.filter(lambda s: s.phase == name)

    def phase(self, name: str) -> SpanRecord:
        """The single span of a phase; AssertionError, listing what exists, if there are none or several."""
        found = self.phases(name)
        if len(found) != 1:
            what = "none" if not found else f"{len(found)}: {list(found)}"
            raise AssertionError(f"expected exactly one span of phase {name!r}, found {what}\n{self.summary()}")
        return found[0]

    def named(self, name: str) -> SpanSet:
        return self.filter(lambda s: s.name == name)

    def where(self, attrs: Mapping[str, Any] | None = None, /, **kw: Any) -> SpanSet:
        """Spans whose attributes match all given values (a callable value is used as a predicate).

        Dotted keys go in the mapping: ``where({"lk_probe.warm": True})``; plain keys may be keywords.
        """
        wanted = {**(attrs or {}), **kw}
        missing = object()

        def match(s: SpanRecord) -> bool:
            for key, want in wanted.items():
                have = s.attributes.get(key, missing)
                if callable(want):
                    if have is missing or not want(have):
                        return False
                elif have is missing or have != (tuple(want) if isinstance(want, list) else want):
                    return False
            return True

        return self.filter(match)

    def trace(self, trace_id: str) -> SpanSet:
        return self.filter(lambda s: s.trace_id == trace_id)

    def traces(self) -> dict[str, SpanSet]:
        """trace_id → SpanSet, in the order of each trace's first span."""
        ids = dict.fromkeys(s.trace_id for s in self._spans)
        return {t: self.trace(t) for t in ids}

    # -- tree -----------------------------------------------------------------------------------------
    def by_id(self, span_id: str) -> SpanRecord:
        for s in self._spans:
            if s.span_id == span_id:
                return s
        raise KeyError(f"no span with span_id {span_id!r} in {self!r}")

    def parent(self, span: SpanRecord) -> SpanRecord | None:
        """The span's parent if it is in this set."""
        if span.parent_id is None:
            return None
        for s in self._spans:
            if s.span_id == span.parent_id and s.trace_id == span.trace_id:
                return s
        return None

    def children(self, span: SpanRecord) -> SpanSet:
        return self.filter(lambda s: s.parent_id == span.span_id and s.trace_id == span.trace_id)

    def descendants(self, span: SpanRecord) -> SpanSet:
        out: list[SpanRecord] = []
        todo = [span]
        while todo:
            kids = self.children(todo.pop())
            out.extend(kids)
            todo.extend(kids)
        return SpanSet(out)

    def roots(self) -> SpanSet:
        """Spans without a parent in this set (true roots, and orphans whose parent was not collected)."""
        present = {(s.trace_id, s.span_id) for s in self._spans}
        return self.filter(lambda s: s.parent_id is None or (s.trace_id, s.parent_id) not in present)

    # -- assertions ----------------------------------------------------------------------------------
    def summary(self) -> str:
        """One line per span: start offset, name, ids; used in assertion messages."""
        if not self._spans:
            return "  (no spans)"
        t0 = self._spans[0].start_ns
        return "\n".join(
            f"  +{(s.start_ns - t0) / 1e6:9.3f}ms {s.phase:<24} trace={s.trace_id[:8]} span={s.span_id}"
            f" parent={s.parent_id}{' ERROR' if s.error else ''}"
            for s in self._spans
        )

    def _resolve(self, item: str | SpanRecord) -> SpanRecord:
        return item if isinstance(item, SpanRecord) else self.phase(item)

    def assert_order(self, *phase_names: str | SpanRecord) -> None:
        """The phases (each exactly once) started in this order (start times non-decreasing)."""
        spans = [self._resolve(p) for p in phase_names]
        for a, b in zip(spans, spans[1:]):
            if b.start_ns < a.start_ns:
                lines = "\n".join(f"  {s.phase:<24} start_ns={s.start_ns}" for s in spans)
                raise AssertionError(
                    f"{b.phase!r} started {(a.start_ns - b.start_ns) / 1e6:.3f}ms before {a.phase!r}; "
                    f"expected the order:\n{lines}"
                )

    def assert_parent(self, child_phase: str | SpanRecord, parent_phase: str | SpanRecord) -> SpanRecord:
        """The child phase's span is a direct child of the parent phase's span. Returns the child."""
        child, parent = self._resolve(child_phase), self._resolve(parent_phase)
        if child.parent_id != parent.span_id or child.trace_id != parent.trace_id:
            actual = self.parent(child)
            got = actual.phase if actual else f"<not in set: {child.parent_id}>" if child.parent_id else "<root>"
            raise AssertionError(
                f"expected {child.phase!r} to be a child of {parent.phase!r} (span {parent.span_id}), "
                f"but its parent is {got}\n{self.summary()}"
            )
        return child

    def assert_single_trace(self) -> str:
        """All spans share one trace id. Returns it."""
        traces = self.traces()
        if len(traces) != 1:
            lines = "\n".join(
                f"  {t}: {len(ss)} spans, roots: {', '.join(r.phase for r in ss.roots())}" for t, ss in traces.items()
            )
            raise AssertionError(f"expected a single trace, found {len(traces)}:\n{lines}")
        return next(iter(traces))

    def assert_no_duplicates(self) -> None:
        """No span id twice, and no two spans with the same name, parent and start time."""
        problems: list[str] = []
        seen_id: dict[str, SpanRecord] = {}
        seen_key: dict[tuple[str, str | None, int, Any], SpanRecord] = {}
        for s in self._spans:
            if s.span_id in seen_id:
                problems.append(f"  span_id {s.span_id} twice: {seen_id[s.span_id].name!r} and {s.name!r}")
            seen_id.setdefault(s.span_id, s)
            # a phase's stall records all start with the phase: they differ by their number
            key = (s.name, s.parent_id, s.start_ns, s.attributes.get(STALL_COUNT_ATTRIBUTE))
            if key in seen_key:
                problems.append(f"  {s.name!r} twice under parent {s.parent_id} at start_ns={s.start_ns}")
            seen_key.setdefault(key, s)
        if problems:
            raise AssertionError("duplicate spans:\n" + "\n".join(problems))

    # -- export ------------------------------------------------------------------------------------------
    def as_dicts(self, *, normalize: bool = False, include_resources: bool = False) -> list[dict[str, Any]]:
        """Plain, deterministic dicts (start order), in the style of logfire's ``exported_spans_as_dict``.

        With ``normalize=True`` trace and span ids become 1, 2, 3… in order of appearance, and every timestamp
        (starts, ends, events) becomes its rank among all distinct timestamps (1, 2, 3…), so the result is stable
        across runs while keeping order and parentage.
        """
        traces: dict[str, Any] = {}
        span_ids: dict[str, Any] = {}
        times: dict[int, Any] = {}
        if normalize:
            for s in self._spans:
                traces.setdefault(s.trace_id, len(traces) + 1)
                span_ids.setdefault(s.span_id, len(span_ids) + 1)
            stamps = {t for s in self._spans for t in (s.start_ns, s.end_ns, *(e.t_ns for e in s.events))}
            times = {t: i for i, t in enumerate(sorted(t for t in stamps if t is not None), 1)}

        def tid(v: str) -> Any:
            return traces.setdefault(v, len(traces) + 1) if normalize else v

        def sid(v: str | None) -> Any:
            if v is None:
                return None
            return span_ids.setdefault(v, len(span_ids) + 1) if normalize else v

        def ts(v: int | None) -> Any:
            return times.get(v) if normalize and v is not None else v

        def attrs(a: Mapping[str, Any]) -> dict[str, Any]:
            return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(a.items())}

        out = []
        for s in self._spans:
            d: dict[str, Any] = {
                "name": s.name,
                "context": {"trace_id": tid(s.trace_id), "span_id": sid(s.span_id)},
                "parent": sid(s.parent_id),
                "kind": s.kind,
                "start_time": ts(s.start_ns),
                "end_time": ts(s.end_ns),
                "status": {"code": s.status_code, "message": s.status_message},
                "attributes": attrs(s.attributes),
            }
            if s.events:
                d["events"] = [
                    {"name": e.name, "timestamp": ts(e.t_ns), "attributes": attrs(e.attributes)} for e in s.events
                ]
            if s.links:
                d["links"] = [
                    {
                        "context": {"trace_id": tid(lk.trace_id), "span_id": sid(lk.span_id)},
                        "attributes": attrs(lk.attributes),
                    }
                    for lk in s.links
                ]
            if include_resources:
                d["resource"] = attrs(s.resource)
                d["scope"] = s.scope
            out.append(d)
        return out
