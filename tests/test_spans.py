from __future__ import annotations

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, set_span_in_context

from lk_probe.spans import SpanEvent, SpanLink, SpanRecord, SpanSet

T1 = "0af7651916cd43dd8448eb211c80319c"
T2 = "4bf92f3577b34da6a3ce929d0e0e4736"
MS = 1_000_000
B = 1_700_000_000_000_000_000


def rec(name, span_id, parent=None, start=0, end=10, trace=T1, **kw) -> SpanRecord:
    return SpanRecord(name, trace, span_id * 16, parent * 16 if parent else None, B + start * MS,
                      None if end is None else B + end * MS, **kw)


@pytest.fixture
def connect() -> SpanSet:
    # given out of order on purpose
    return SpanSet([
        rec("rtc.join", "4", "2", 40, 60),
        rec("rtc.connect", "1", None, 0, 100, kind="CLIENT"),
        rec("rtc.attempt", "2", "1", 1, 90, attributes={"lk_probe.attempt": 1}),
        rec("rtc.signal", "3", "2", 2, 40, attributes={"lk_probe.signal.path": "v1", "server.port": 7880}),
        rec("rtc.pc", "5", "2", 60, 90, attributes={"lk_probe.pc": "subscriber"}),
        rec("rtc.pc", "6", "2", 61, 80, attributes={"lk_probe.pc": "publisher"}),
    ])


def sdk_spans():
    exporter = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource({"service.name": "lk-test"}))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tp.get_tracer("lk_probe.test")
    root = tracer.start_span("job", kind=SpanKind.CONSUMER, start_time=B, attributes={"lk.job_id": "AJ_1"})
    ctx = set_span_in_context(root)
    child = tracer.start_span("job.launch", context=ctx, start_time=B + 5 * MS,
                              attributes={"lk_probe.warm": True, "tags": ["a", "b"]},
                              links=[Link(root.get_span_context(), {"why": "test"})])
    child.add_event("picked", {"pid": 42}, timestamp=B + 6 * MS)
    child.set_status(Status(StatusCode.ERROR, "no process"))
    child.end(end_time=B + 25 * MS)
    root.end(end_time=B + 100 * MS)
    tp.shutdown()
    return exporter.get_finished_spans()


def test_from_readable_exact():
    readable = sdk_spans()
    spans = SpanSet(readable)  # ReadableSpans are converted
    job, launch = spans.phase("job"), spans.phase("job.launch")
    ctx = readable[1].context
    assert job.trace_id == format(ctx.trace_id, "032x") and len(job.trace_id) == 32
    assert job.span_id == format(ctx.span_id, "016x")
    assert job.parent_id is None and launch.parent_id == job.span_id
    assert (job.kind, launch.kind) == ("CONSUMER", "INTERNAL")
    assert (launch.start_ns, launch.end_ns) == (B + 5 * MS, B + 25 * MS)
    assert launch.duration == pytest.approx(0.020) and launch.start == pytest.approx(B / 1e9 + 0.005)
    assert launch.error and not job.error and job.status_code == "UNSET"
    assert (launch.status_code, launch.status_message) == ("ERROR", "no process")
    assert launch.attributes == {"lk_probe.warm": True, "tags": ("a", "b")}
    assert launch.events == [SpanEvent("picked", B + 6 * MS, {"pid": 42})]
    assert launch.links == [SpanLink(job.trace_id, job.span_id, {"why": "test"})]
    assert launch.links[0] == (job.trace_id, job.span_id, {"why": "test"})  # plain tuples too
    assert launch.resource["service.name"] == "lk-test" and launch.scope == "lk_probe.test"
    assert launch.received_ns is None


def test_from_otlp_matches_from_readable():
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    readable = sdk_spans()
    request = encode_spans(readable)
    got = []
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            got += [SpanRecord.from_otlp(s, rs.resource.attributes, ss.scope.name) for s in ss.spans]
    assert SpanSet(got) == SpanSet(readable)


def test_phase_uses_attribute_then_name():
    s = rec("custom name", "1", attributes={"lk_probe.phase": "rtc.signal"})
    assert s.phase == "rtc.signal" and rec("rtc.join", "2").phase == "rtc.join"
    assert SpanSet([s]).phase("rtc.signal") is s
    assert len(SpanSet([s]).named("custom name")) == 1 and not SpanSet([s]).named("rtc.signal")


def test_ordering_and_sequence(connect):
    assert [s.name for s in connect] == ["rtc.connect", "rtc.attempt", "rtc.signal", "rtc.join", "rtc.pc", "rtc.pc"]
    assert isinstance(connect[1:3], SpanSet) and len(connect[1:3]) == 2
    assert connect[0].name == "rtc.connect"
    assert repr(connect) == (
        "<SpanSet 6 spans, 1 trace(s): rtc.connect, rtc.attempt, rtc.signal, rtc.join, rtc.pc, rtc.pc>"
    )
    assert repr(connect[2]) == f"<SpanRecord 'rtc.signal' 38.0ms span_id={'3' * 16} parent_id={'2' * 16}>"


def test_phase_errors_list_what_exists(connect):
    with pytest.raises(AssertionError, match=r"exactly one span of phase 'rtc.pc', found 2") as e:
        connect.phase("rtc.pc")
    assert "rtc.signal" in str(e.value)  # the summary of everything present
    with pytest.raises(AssertionError, match=r"phase 'rtc.region_fetch', found none\n.*rtc.connect"):
        connect.phase("rtc.region_fetch")
    assert [s.span_id[0] for s in connect.phases("rtc.pc")] == ["5", "6"]


def test_where(connect):
    assert connect.where({"lk_probe.pc": "publisher"})[0].span_id == "6" * 16
    assert len(connect.where({"lk_probe.pc": lambda v: v.endswith("er")})) == 2
    assert not connect.where({"lk_probe.pc": "nope"})
    s = rec("x", "7", attributes={"attempt": 2, "tags": ("a",)})
    assert SpanSet([s]).where(attempt=2)[0] is s
    assert SpanSet([s]).where({"tags": ["a"]})[0] is s
    assert not SpanSet([s]).where(attempt=2, missing=None)


def test_tree(connect):
    attempt = connect.phase("rtc.attempt")
    assert [s.name for s in connect.children(attempt)] == ["rtc.signal", "rtc.join", "rtc.pc", "rtc.pc"]
    assert connect.parent(attempt) is connect.phase("rtc.connect")
    assert connect.parent(connect.phase("rtc.connect")) is None
    assert len(connect.descendants(connect.phase("rtc.connect"))) == 5
    assert [s.name for s in connect.roots()] == ["rtc.connect"]
    assert connect.by_id("3" * 16).name == "rtc.signal"
    with pytest.raises(KeyError):
        connect.by_id("f" * 16)


def test_roots_include_orphans_and_traces():
    spans = SpanSet([rec("a", "1", None, 0, 5), rec("b", "2", "9", 1, 2), rec("c", "3", None, 3, 4, trace=T2)])
    assert [s.name for s in spans.roots()] == ["a", "b", "c"]
    assert list(spans.traces()) == [T1, T2]
    assert [s.name for s in spans.trace(T2)] == ["c"]
    assert spans.parent(spans[1]) is None


def test_assert_order(connect):
    connect.assert_order("rtc.connect", "rtc.signal", "rtc.join")
    connect.assert_order("rtc.signal", "rtc.signal")  # equal start times are fine
    with pytest.raises(AssertionError, match=r"'rtc.signal' started 38.000ms before 'rtc.join'"):
        connect.assert_order("rtc.join", "rtc.signal")
    with pytest.raises(AssertionError, match="exactly one"):
        connect.assert_order("rtc.connect", "rtc.pc")


def test_assert_parent(connect):
    assert connect.assert_parent("rtc.signal", "rtc.attempt").name == "rtc.signal"
    with pytest.raises(AssertionError, match=r"'rtc.signal' to be a child of 'rtc.connect' .* parent is rtc.attempt"):
        connect.assert_parent("rtc.signal", "rtc.connect")
    with pytest.raises(AssertionError, match="its parent is <root>"):
        connect.assert_parent("rtc.connect", "rtc.attempt")
    # same span id, other trace: not a parent
    other = SpanSet([rec("p", "1", None, 0, 5), rec("c", "2", "1", 1, 2, trace=T2)])
    with pytest.raises(AssertionError, match="not in set"):
        other.assert_parent("c", "p")


def test_assert_single_trace(connect):
    assert connect.assert_single_trace() == T1
    mixed = SpanSet([*connect, rec("job", "8", None, 0, 1, trace=T2)])
    with pytest.raises(AssertionError, match=rf"single trace, found 2:\n  {T1}: 6 spans, roots: rtc.connect\n  {T2}"):
        mixed.assert_single_trace()


def test_assert_no_duplicates(connect):
    connect.assert_no_duplicates()
    same_id = SpanSet([*connect, rec("other", "3", "2", 70, 71)])
    with pytest.raises(AssertionError, match=rf"span_id {'3' * 16} twice: 'rtc.signal' and 'other'"):
        same_id.assert_no_duplicates()
    twice = SpanSet([*connect, rec("rtc.signal", "9", "2", 2, 30)])
    with pytest.raises(AssertionError, match=r"'rtc.signal' twice under parent 2+ at start_ns="):
        twice.assert_no_duplicates()


def test_as_dicts_normalized():
    spans = SpanSet([
        rec("child", "b", "a", 5, 8, attributes={"z": 1, "tags": ("x", "y")},
            events=[SpanEvent("e", B + 6 * MS, {"k": "v"})], links=[SpanLink(T2, "c" * 16, {})]),
        rec("root", "a", None, 0, 10, kind="SERVER", status_code="ERROR", status_message="bad"),
    ])
    assert spans.as_dicts(normalize=True) == [
        {"name": "root", "context": {"trace_id": 1, "span_id": 1}, "parent": None, "kind": "SERVER",
         "start_time": 1, "end_time": 5, "status": {"code": "ERROR", "message": "bad"}, "attributes": {}},
        {"name": "child", "context": {"trace_id": 1, "span_id": 2}, "parent": 1, "kind": "INTERNAL",
         "start_time": 2, "end_time": 4, "status": {"code": "UNSET", "message": ""},
         "attributes": {"tags": ["x", "y"], "z": 1},
         "events": [{"name": "e", "timestamp": 3, "attributes": {"k": "v"}}],
         "links": [{"context": {"trace_id": 2, "span_id": 3}, "attributes": {}}]},
    ]
    raw = spans.as_dicts(include_resources=True)
    assert raw[1]["context"] == {"trace_id": T1, "span_id": "b" * 16} and raw[1]["start_time"] == B + 5 * MS
    assert raw[0]["resource"] == {} and raw[0]["scope"] == ""


def test_as_dicts_deterministic_for_sdk_runs():
    assert SpanSet(sdk_spans()).as_dicts(normalize=True) == SpanSet(sdk_spans()).as_dicts(normalize=True)
    assert SpanSet(sdk_spans()).as_dicts() != SpanSet(sdk_spans()).as_dicts()  # random ids without normalize


def test_open_span():
    s = rec("stall", "1", end=None)
    assert s.duration is None and s.end is None and "open" in repr(s)
