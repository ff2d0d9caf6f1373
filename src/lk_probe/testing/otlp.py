"""A real OTLP trace receiver for tests and the demo: OTLP/HTTP protobuf and, optionally, OTLP/gRPC, on loopback.

Usage::

    from lk_probe.testing.otlp import OtlpReceiver

    with OtlpReceiver(grpc_port=0) as rx:          # ports 0 = ephemeral
        exporter = OTLPSpanExporter(endpoint=rx.http_endpoint)       # proto-http exporter
        # or grpc:  OTLPSpanExporter(endpoint=rx.grpc_endpoint, insecure=True)
        ...
        span = rx.wait_for_phase("rtc.signal", timeout=5)            # also sees spans that arrived earlier
        rx.spans().assert_parent("rtc.signal", "rtc.attempt")

API:

* ``OtlpReceiver(host="127.0.0.1", http_port=0, grpc_port=None, lifetime=600)``. ``grpc_port=None`` disables gRPC.
  Only loopback hosts are accepted (ValueError otherwise). ``lifetime`` seconds after ``start()`` the receiver stops
  by itself, so a forgotten receiver never outlives a test session.
* ``start()`` / ``stop()`` (idempotent), or use it as a context manager. ``running`` tells whether it serves.
* ``http_endpoint`` (``http://127.0.0.1:PORT/v1/traces``), ``grpc_endpoint`` (``http://127.0.0.1:PORT``), ``http_port``,
  ``grpc_port``.
* ``spans()`` → :class:`lk_probe.spans.SpanSet` of everything received; each record has ``received_ns``
  (``time.time_ns()`` on arrival). ``requests`` lists ``(transport, content_encoding, n_spans)`` per accepted request.
* ``wait_for(predicate, timeout=5.0)`` / ``wait_for_phase(name, timeout=5.0, predicate=None)`` return the first
  matching span, received before or after the call; TimeoutError (listing what arrived) otherwise.
* ``clear()`` forgets everything received.

HTTP answers: 200 with an ``ExportTraceServiceResponse``; 400 for a body that is not a valid (optionally gzip or
deflate compressed) protobuf request; 404 for other paths; 413 above 64 MiB; 415 for JSON.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from lk_probe._otlp_wire import MAX_BODY as _MAX_BODY
from lk_probe._otlp_wire import WireError, decode, records
from lk_probe.spans import SpanRecord, SpanSet

__all__ = ["OtlpReceiver"]


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"OtlpReceiver binds loopback only (127.0.0.1, ::1, localhost), not {host!r}")


class OtlpReceiver:
    """Collects OTLP trace exports in memory; see the module docstring."""

    __test__ = False

    def __init__(
        self,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int | None = None,
        lifetime: float = 600.0,
    ) -> None:
        _check_loopback(host)
        self.host = "127.0.0.1" if host == "localhost" else host
        self.lifetime = lifetime
        self._want_http_port = http_port
        self._want_grpc_port = grpc_port
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self.requests: list[tuple[str, str, int]] = []
        self._records: list[SpanRecord] = []
        self._cond = threading.Condition()
        self._http: ThreadingHTTPServer | None = None
        self._grpc: Any = None
        self._timer: threading.Timer | None = None
        self._lifecycle = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> OtlpReceiver:
        with self._lifecycle:
            if self._http is None:
                try:
                    self._start()
                except BaseException:
                    self._close()
                    raise
        return self

    def _start(self) -> None:
        self._http = _make_http_server(self)
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, args=(0.05,), name="lk_probe-otlp-http", daemon=True).start()
        if self._want_grpc_port is not None:
            self._grpc, self.grpc_port = _make_grpc_server(self, self._want_grpc_port)
            self._grpc.start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        with self._lifecycle:  # the lifetime timer may call this at the same time as the test
            self._close()

    def _close(self) -> None:
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(5)
        self._http = self._grpc = self._timer = None

    @property
    def running(self) -> bool:
        return self._http is not None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- endpoints -----------------------------------------------------------------------------------------
    def _base(self, port: int | None) -> str:
        if port is None:
            raise RuntimeError("OtlpReceiver is not started (or this transport is disabled)")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    @property
    def http_endpoint(self) -> str:
        return self._base(self.http_port) + "/v1/traces"

    @property
    def grpc_endpoint(self) -> str:
        return self._base(self.grpc_port)

    # -- data -----------------------------------------------------------------------------------------------
    def _ingest(self, request: ExportTraceServiceRequest, transport: str, encoding: str) -> None:
        received = records(request)
        with self._cond:
            self._records.extend(received)
            self.requests.append((transport, encoding, len(received)))
            self._cond.notify_all()

    def spans(self) -> SpanSet:
        with self._cond:
            return SpanSet(self._records)

    def clear(self) -> None:
        with self._cond:
            self._records.clear()
            self.requests.clear()

    def wait_for(self, predicate: Callable[[SpanRecord], bool], timeout: float = 5.0) -> SpanRecord:
        """The first received span matching ``predicate``, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        checked = 0
        with self._cond:
            while True:
                for rec in self._records[checked:]:
                    if predicate(rec):
                        return rec
                checked = len(self._records)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no matching span received within {timeout}s; received {len(self._records)}:\n"
                        f"{SpanSet(self._records).summary()}"
                    )
                self._cond.wait(left)

    def wait_for_phase(
        self, name: str, timeout: float = 5.0, predicate: Callable[[SpanRecord], bool] | None = None
    ) -> SpanRecord:
        """The first received span of phase ``name`` (and matching ``predicate``)."""
        return self.wait_for(lambda s: s.phase == name and (predicate is None or predicate(s)), timeout)

    def __repr__(self) -> str:
        state = f"http={self.http_port} grpc={self.grpc_port}" if self.running else "stopped"
        return f"<OtlpReceiver {state} spans={len(self._records)}>"


def _make_http_server(receiver: OtlpReceiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def _reply(self, code: int, body: bytes = b"", ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > _MAX_BODY:
                self.close_connection = True
                return self._reply(413 if length > 0 else 400, b"bad Content-Length")
            body = self.rfile.read(length)
            if self.path.split("?")[0] != "/v1/traces":
                return self._reply(404, b"only /v1/traces")
            if "json" in (self.headers.get("Content-Type") or ""):
                return self._reply(415, b"only application/x-protobuf")
            encoding = self.headers.get("Content-Encoding") or ""
            try:
                request = decode(body, encoding)
            except WireError as exc:
                return self._reply(400, str(exc).encode())
            receiver._ingest(request, "http", encoding)
            self._reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in receiver.host else socket.AF_INET

    return Server((receiver.host, receiver._want_http_port), Handler)


def _make_grpc_server(receiver: OtlpReceiver, port: int) -> tuple[Any, int]:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:
            receiver._ingest(request, "grpc", "")  # grpc decompresses itself and does not expose the encoding
            return ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="lk_probe-otlp-grpc"))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), server)
    host = f"[{receiver.host}]" if ":" in receiver.host else receiver.host
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"could not bind gRPC on {host}:{port}")
    return server, bound
