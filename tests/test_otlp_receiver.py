"""The OTLP receiver against the real SDK and the real OTLP/HTTP and OTLP/gRPC exporters."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, set_span_in_context

from lk_probe.spans import SpanEvent, SpanLink, SpanRecord
from lk_probe.testing.otlp import OtlpReceiver

MS = 1_000_000
B = 1_700_000_000_000_000_000

TRANSPORTS = {
    "http": lambda rx: HttpExporter(endpoint=rx.http_endpoint, timeout=5),
    "http+gzip": lambda rx: HttpExporter(endpoint=rx.http_endpoint, timeout=5, compression=Compression.Gzip),
    "http+deflate": lambda rx: HttpExporter(endpoint=rx.http_endpoint, timeout=5, compression=Compression.Deflate),
    "grpc": lambda rx: GrpcExporter(endpoint=rx.grpc_endpoint, insecure=True, timeout=5),
    "grpc+gzip": lambda rx: GrpcExporter(endpoint=rx.grpc_endpoint, insecure=True, timeout=5,
                                         compression=grpc.Compression.Gzip),
}


@pytest.fixture
def rx():
    with OtlpReceiver(grpc_port=0, lifetime=60) as receiver:
        yield receiver


def provider(*exporters) -> TracerProvider:
    tp = TracerProvider(resource=Resource({"service.name": "lk-rx-test", "deployment": "ci"}))
    for exp in exporters:
        tp.add_span_processor(SimpleSpanProcessor(exp))
    return tp


def emit(tp: TracerProvider) -> None:
    """A CONSUMER root, two CLIENT children (one failing), an event, a link and all attribute types."""
    tracer = tp.get_tracer("lk_probe.rx", "1.2.3")
    job = tracer.start_span("job", kind=SpanKind.CONSUMER, start_time=B, attributes={"lk.job_id": "AJ_1"})
    ctx = set_span_in_context(job)
    signal = tracer.start_span(
        "rtc.signal", context=ctx, kind=SpanKind.CLIENT, start_time=B + 1 * MS,
        attributes={"lk_probe.signal.path": "v1", "server.port": 7880, "ratio": 12.5, "ok": False,
                    "paths": ["v1", "v0"]},
        links=[Link(job.get_span_context(), {"link.kind": "follows"})],
    )
    signal.add_event("signal.closed", {"code": 1006}, timestamp=B + 3 * MS)
    signal.set_status(Status(StatusCode.ERROR, "websocket closed"))
    signal.end(end_time=B + 4 * MS + 17)
    join = tracer.start_span("rtc.join", context=ctx, kind=SpanKind.CLIENT, start_time=B + 5 * MS)
    join.set_status(Status(StatusCode.OK))
    join.end(end_time=B + 9 * MS)
    job.end(end_time=B + 10 * MS)


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_real_exporter_round_trip_is_exact(rx, transport):
    memory = InMemorySpanExporter()
    tp = provider(TRANSPORTS[transport](rx), memory)
    before = time.time_ns()
    emit(tp)
    tp.shutdown()

    spans = rx.spans()
    assert [s.name for s in spans] == ["job", "rtc.signal", "rtc.join"]
    spans.assert_single_trace()
    spans.assert_no_duplicates()
    spans.assert_parent("rtc.signal", "job")
    spans.assert_parent("rtc.join", "job")
    spans.assert_order("job", "rtc.signal", "rtc.join")
    job, signal, join = spans.phase("job"), spans.phase("rtc.signal"), spans.phase("rtc.join")

    assert (job.kind, signal.kind, join.kind) == ("CONSUMER", "CLIENT", "CLIENT")
    assert job.parent_id is None
    assert (job.start_ns, job.end_ns) == (B, B + 10 * MS)
    assert (signal.start_ns, signal.end_ns) == (B + 1 * MS, B + 4 * MS + 17)  # ns exact
    assert signal.attributes == {"lk_probe.signal.path": "v1", "server.port": 7880, "ratio": 12.5, "ok": False,
                                 "paths": ("v1", "v0")}
    assert signal.events == [SpanEvent("signal.closed", B + 3 * MS, {"code": 1006})]
    assert signal.links == [SpanLink(job.trace_id, job.span_id, {"link.kind": "follows"})]
    assert (signal.status_code, signal.status_message, signal.error) == ("ERROR", "websocket closed", True)
    assert (join.status_code, job.status_code) == ("OK", "UNSET")
    assert job.attributes == {"lk.job_id": "AJ_1"}
    assert job.scope == "lk_probe.rx"
    assert {k: job.resource[k] for k in ("service.name", "deployment")} == {"service.name": "lk-rx-test",
                                                                            "deployment": "ci"}
    assert all(before <= s.received_ns <= time.time_ns() for s in spans)

    # the wire lost nothing the SDK had: identical to the in-process records except the receive time
    for s in spans:
        s.received_ns = None
    assert list(spans) == [SpanRecord.from_readable(r) for r in sorted(memory.get_finished_spans(),
                                                                       key=lambda r: r.start_time)]
    kind = transport.split("+")[0]
    assert [t for t, _, _ in rx.requests] == [kind] * 3
    if kind == "http":
        assert {enc for _, enc, _ in rx.requests} == {transport.split("+")[1] if "+" in transport else ""}


def test_wait_for_sees_earlier_and_later_spans(rx):
    tp = provider(HttpExporter(endpoint=rx.http_endpoint, timeout=5))
    tracer = tp.get_tracer("t")
    tracer.start_span("rtc.signal", attributes={"lk_probe.attempt": 1}).end()
    # arrived before the call
    assert rx.wait_for_phase("rtc.signal", timeout=0.01).attributes["lk_probe.attempt"] == 1

    def later():
        time.sleep(0.2)
        tracer.start_span("rtc.signal", attributes={"lk_probe.attempt": 2}).end()

    threading.Thread(target=later).start()
    t0 = time.monotonic()
    span = rx.wait_for_phase("rtc.signal", timeout=5, predicate=lambda s: s.attributes["lk_probe.attempt"] == 2)
    assert span.attributes["lk_probe.attempt"] == 2 and time.monotonic() - t0 >= 0.15
    assert rx.wait_for(lambda s: s.attributes.get("lk_probe.attempt") == 1) is rx.spans()[0]

    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 0.3s; received 2:\n.*rtc.signal"):
        rx.wait_for_phase("rtc.join", timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 2
    tp.shutdown()

    rx.clear()
    assert len(rx.spans()) == 0 and rx.requests == []
    with pytest.raises(TimeoutError):
        rx.wait_for_phase("rtc.signal", timeout=0.05)


def post(url: str, body: bytes, **headers: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/x-protobuf", **headers})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_malformed_bodies_get_400_and_the_receiver_survives(rx):
    assert post(rx.http_endpoint, b"\xff\xff\xff garbage")[0] == 400
    assert post(rx.http_endpoint, b"not gzip at all", **{"Content-Encoding": "gzip"})[0] == 400
    assert post(rx.http_endpoint, gzip.compress(b"\x0a\xff"), **{"Content-Encoding": "gzip"})[0] == 400
    assert post(rx.http_endpoint, b"x", **{"Content-Encoding": "br"})[0] == 400
    assert post(rx.http_endpoint, b"{}", **{"Content-Type": "application/json"})[0] == 415
    assert post(rx.http_endpoint.replace("/v1/traces", "/v1/logs"), b"")[0] == 404
    assert rx.spans() == rx.spans()[:0] and rx.requests == []

    # an empty body is a valid (empty) request
    status, body = post(rx.http_endpoint, b"")
    assert status == 200 and ExportTraceServiceResponse.FromString(body) == ExportTraceServiceResponse()

    tp = provider(HttpExporter(endpoint=rx.http_endpoint, timeout=5))
    tp.get_tracer("t").start_span("job").end()
    tp.shutdown()
    assert rx.wait_for_phase("job", timeout=5).name == "job"


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_stops_by_itself_after_lifetime():
    rx = OtlpReceiver(grpc_port=0, lifetime=0.5).start()
    http_port, grpc_port = rx.http_port, rx.grpc_port
    assert rx.running and not refused(http_port) and not refused(grpc_port)
    deadline = time.monotonic() + 5
    while rx.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not rx.running
    assert refused(http_port) and refused(grpc_port)
    rx.stop()  # idempotent


def test_stop_and_context_manager():
    with OtlpReceiver() as rx:
        port = rx.http_port
        assert rx.running and rx.http_endpoint == f"http://127.0.0.1:{port}/v1/traces"
        with pytest.raises(RuntimeError, match="not started"):
            rx.grpc_endpoint  # noqa: B018  (gRPC disabled by default)
    assert not rx.running and refused(port)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::"])
def test_refuses_non_loopback(host):
    with pytest.raises(ValueError, match="loopback only"):
        OtlpReceiver(host=host)


def test_localhost_means_ipv4_loopback():
    with OtlpReceiver(host="localhost") as rx:
        assert rx.http_endpoint.startswith("http://127.0.0.1:")
        assert post(rx.http_endpoint, b"")[0] == 200


def test_a_compressed_body_is_never_expanded_past_the_size_limit():
    # a few kB of gzip that expands to more than the 64 MiB limit (what `lk-probe serve` and the receiver accept)
    from lk_probe._otlp_wire import MAX_BODY, WireError, decode, decompress

    bomb = gzip.compress(b"\0" * (MAX_BODY + 1))
    assert len(bomb) < MAX_BODY // 500
    with pytest.raises(WireError, match="over 67108864 bytes"):
        decode(bomb, "gzip")
    assert decompress(gzip.compress(b"ok"), "gzip") == b"ok"
    with pytest.raises(WireError, match="truncated"):
        decode(gzip.compress(b"x" * 100)[:-10], "gzip")
