from __future__ import annotations

import io
import random
import re

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode, set_span_in_context

from lk_probe.spans import SpanEvent, SpanRecord, SpanSet
from lk_probe.waterfall import print_waterfall, render

T1 = "0af7651916cd43dd8448eb211c80319c"
MS = 1_000_000
B = 1_700_000_000_000_000_000


def rec(name, sid, parent, start, end, trace=T1, **kw) -> SpanRecord:
    return SpanRecord(name, trace, sid * 16, parent * 16 if parent else None, B + start * MS,
                      None if end is None else B + end * MS, **kw)


SPANS = [
    rec("rtc.connect", "1", None, 0, 100, kind="CLIENT"),
    rec("rtc.attempt", "2", "1", 1, 50, status_code="ERROR",
        attributes={"lk_probe.attempt": 1, "error.type": "TimeoutError", "server.port": 7880}),
    rec("rtc.signal", "3", "2", 2, 40, status_code="ERROR", status_message="timed out",
        attributes={"lk_probe.signal.path": "v1"}, events=[SpanEvent("closed", B + 40 * MS, {"code": 1006})]),
    rec("rtc.attempt", "4", "1", 60, 97, attributes={"lk_probe.attempt": 2}),
    rec("rtc.pc", "5", "4", 70, None, attributes={"lk_probe.pc": "subscriber"}),
    rec("stall", "6", "9", 150, 150, trace="1" * 32),  # an orphan in a second trace
]

# width 82 with a 16-character name column leaves 50 bar cells: one cell = 2 ms of the 100 ms trace;
# a bar covers every cell its span touches (the second attempt ends inside cell 48)
GOLDEN = """\
trace 0af7651916cd43dd8448eb211c80319c · 5 spans · 100.0 ms
rtc.connect      │██████████████████████████████████████████████████│   100.0 ms
├─ rtc.attempt   │█████████████████████████                         │    49.0 ms ✗
│  │ ERROR attempt=1 error.type=TimeoutError
│  └─ rtc.signal │ ███████████████████◆                             │    38.0 ms ✗
│       ERROR 'timed out' signal.path=v1
│       ◆ +40.0 ms closed code=1006
└─ rtc.attempt   │                              ███████████████████ │    37.0 ms
   │ attempt=2
   └─ rtc.pc     │                                   ░░░░░░░░░░░░░░░│       open
        pc=subscriber

trace 11111111111111111111111111111111 · 1 span · 0.0 ms
… stall │█                                                          │     0.0 ms
"""


def test_golden():
    assert render(SPANS, width=82) == GOLDEN


def test_module_docstring_example_is_real():
    import lk_probe.waterfall

    for line in render(SPANS[:5], width=76).splitlines():
        assert "    " + line in lk_probe.waterfall.__doc__.splitlines()


def test_deterministic_whatever_the_input_order():
    shuffled = SPANS[:]
    random.Random(7).shuffle(shuffled)
    assert render(shuffled, width=82) == render(SpanSet(SPANS), width=82) == GOLDEN


def test_trace_filter_and_width():
    one = render(SPANS, width=60, trace_id="1" * 32)
    assert one.splitlines()[0] == "trace 11111111111111111111111111111111 · 1 span · 0.0 ms"
    assert "rtc.connect" not in one
    for width in (40, 60, 82, 140):
        assert max(len(line) for line in render(SPANS, width=width).splitlines()) <= width
    assert render([]) == "(no spans)\n"


def test_long_names_are_cut():
    spans = [rec("x" * 80, "1", None, 0, 10)]
    row = render(spans, width=60).splitlines()[1]
    assert row.startswith("x" * 23 + "… │") and len(row) == 58  # no ✗ column on a good span


def test_print_plain_and_colour():
    buf = io.StringIO()
    print_waterfall(SPANS, buf, width=82)
    assert buf.getvalue() == GOLDEN  # StringIO is not a terminal: plain text
    buf = io.StringIO()
    print_waterfall(SPANS, buf, width=82, color=True)
    coloured = buf.getvalue()
    assert "\x1b[" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == GOLDEN


def sdk_spans():
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tp.get_tracer("t")
    job = tracer.start_span("job", start_time=B)
    ctx = set_span_in_context(job)
    launch = tracer.start_span("job.launch", context=ctx, start_time=B + 10 * MS, attributes={"lk_probe.warm": False})
    launch.end(end_time=B + 30 * MS)
    connect = tracer.start_span("job.connect", context=ctx, start_time=B + 40 * MS)
    signal = tracer.start_span("rtc.signal", context=set_span_in_context(connect), start_time=B + 45 * MS,
                               attributes={"error.type": "ConnectionRefusedError"})
    signal.add_event("retry", timestamp=B + 50 * MS)
    signal.set_status(Status(StatusCode.ERROR, "refused"))
    signal.end(end_time=B + 60 * MS)
    connect.end(end_time=B + 90 * MS)
    job.end(end_time=B + 100 * MS)
    tp.shutdown()
    return exporter.get_finished_spans()


def test_from_real_sdk_spans():
    spans = SpanSet(sdk_spans())
    text = render(spans, width=70)
    lines = text.splitlines()
    assert lines[0] == f"trace {spans[0].trace_id} · 4 spans · 100.0 ms"
    names = [re.match(r"[│├└─ …]*(\S+)", line).group(1) for line in lines[1:] if "█" in line]
    assert names == ["job", "job.launch", "job.connect", "rtc.signal"]
    assert lines[1].startswith("job ") and "├─ job.launch" in lines[2] and "└─ job.connect" in text
    assert "   └─ rtc.signal" in text
    signal_row = next(line for line in lines if "rtc.signal" in line)
    assert signal_row.endswith("15.0 ms ✗") and "◆" in signal_row
    assert "ERROR error.type=ConnectionRefusedError" in text and "warm=False" in text
    assert "◆ +50.0 ms retry" in text
    # bars sit on the timeline: the child starts after its parent's bar starts
    starts = {n: line.index("█") for n, line in zip(names, [line for line in lines if "█" in line])}
    assert starts["job"] < starts["job.launch"] < starts["job.connect"] < starts["rtc.signal"]
    # same timestamps, new random ids: only the header differs
    again = render(SpanSet(sdk_spans()), width=70).splitlines()
    assert again[1:] == lines[1:] and again[0] != lines[0]
