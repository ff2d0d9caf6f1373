"""``lk-probe serve``: an OTLP receiver for a developer's machine, with no tracing backend.

One terminal runs ``lk-probe serve``, another the agent with ``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318``.
It accepts OTLP/HTTP (``POST /v1/traces``, protobuf or JSON, optionally gzip / deflate) on port 4318 and OTLP/gRPC on
port 4317, on 127.0.0.1 unless ``--host`` says otherwise, and

* prints a stall record the moment it arrives (a phase still open past its budget);
* prints each job as its trace completes — when the worker's ``job`` root span arrives (plus a short grace for the
  rest of the last batch): one verdict line (the job, its room, its length, its first finding), then the waterfall
  and the findings (``--brief``: the verdict line only). A plain ``livekit.rtc`` trace, with no job, completes with
  its ``rtc.connect`` or ``rtc.reconnect`` root;
* keeps the last ``--keep`` traces in memory (at most :data:`MAX_SPANS` spans each) and hands them out as OTLP JSON
  at ``GET /lk-probe/spans``, which is what ``lk-probe show|diagnose http://HOST:PORT`` read;
* with ``--save DIR`` also writes each trace as it completes (and the unfinished ones when it stops) to
  ``DIR/<trace id>.json``, OTLP JSON that ``lk-probe show DIR`` reads.

Bad payloads get HTTP 400 (415 for a content type other than protobuf or JSON, 413 above 64 MiB, 404 elsewhere) or
gRPC ``INVALID_ARGUMENT``, and the server keeps serving. Needs aiohttp (the ``cli`` extra); gRPC uses the grpc package
the OTLP exporter brings.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import ipaddress
import os
import signal
import socket
import sys
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

from . import _catalogue as c
from ._otlp_wire import MAX_BODY, WireError, decode, decompress, records
from ._report import SERVE_SPANS_PATH, findings_text, job_traces, verdict
from .otlpjson import OtlpJsonError, dumps, loads
from .spans import SpanRecord, SpanSet

MAX_SPANS = 10_000  # per kept trace, besides its roots
GRACE = 0.25  # s after a trace's root arrives: the rest of the batch it came with, from the other processes
_JOB_ROOT = "job"
_PLAIN_ROOTS = ("rtc.connect", "rtc.reconnect")  # a trace with no job completes with these
_EXPORT_METHOD = ("opentelemetry.proto.collector.trace.v1.TraceService", "Export")


class Store:
    """The kept traces (trace id → spans, oldest first), what completes them, and what is printed and saved."""

    def __init__(self, out: IO[str], *, keep: int = 100, save: Path | None = None, brief: bool = False,
                 width: int | None = None, grace: float = GRACE) -> None:
        self.out, self.keep, self.save, self.brief, self.width, self.grace = out, keep, save, brief, width, grace
        self.traces: OrderedDict[str, list[SpanRecord]] = OrderedDict()
        self.dropped = 0  # spans beyond MAX_SPANS of their trace
        self._due: dict[str, asyncio.TimerHandle] = {}
        self._unsaved: set[str] = set()

    def add(self, received: list[SpanRecord]) -> None:
        for span in received:
            kept = self.traces.get(span.trace_id)
            if kept is None:
                kept = self.traces[span.trace_id] = []
                while len(self.traces) > self.keep:
                    self._forget(next(iter(self.traces)))
            if len(kept) >= MAX_SPANS and span.parent_id is not None:  # a root is kept: it completes the trace
                self.dropped += 1
                continue
            kept.append(span)
            self._unsaved.add(span.trace_id)
            if span.phase == "stall":
                self._stall(span, kept)
            if span.parent_id is None and self._completes(span, kept):
                self._complete_soon(span.trace_id)

    @staticmethod
    def _completes(root: SpanRecord, kept: list[SpanRecord]) -> bool:
        if root.name == _JOB_ROOT:
            return True
        return root.name in _PLAIN_ROOTS and not any(s.attributes.get(c.JOB_ID) for s in kept)

    def _complete_soon(self, trace_id: str) -> None:
        if trace_id in self._due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a direct call): at once
            self.complete(trace_id)
            return
        self._due[trace_id] = loop.call_later(self.grace, self.complete, trace_id)

    def _forget(self, trace_id: str) -> None:
        self._save(trace_id)
        handle = self._due.pop(trace_id, None)
        if handle is not None:
            handle.cancel()
        self.traces.pop(trace_id, None)

    def spans(self) -> SpanSet:
        return SpanSet(s for kept in self.traces.values() for s in kept)

    # -- output ---------------------------------------------------------------------------------------
    def _stall(self, span: SpanRecord, kept: list[SpanRecord]) -> None:
        a = span.attributes
        job = a.get(c.JOB_ID) or next((s.attributes[c.JOB_ID] for s in kept if s.attributes.get(c.JOB_ID)), None)
        who = f"job {job}" if job else f"trace {span.trace_id}"
        self._write(f"stall · {who} · {a.get(c.STALL_PHASE, span.name)} still open after "
                    f"{float(a.get(c.STALL_ELAPSED, 0)):.1f} s (budget {float(a.get(c.STALL_BUDGET, 0)):.1f} s)\n")

    def complete(self, trace_id: str) -> None:
        """Print the trace's jobs (verdict, waterfall, findings) and save it."""
        from ._findings import diagnose
        from .waterfall import print_waterfall

        self._due.pop(trace_id, None)
        trace = SpanSet(self.traces.get(trace_id, ()))
        if not trace:
            return
        jobs: list[tuple[str | None, SpanSet]] = list(job_traces(trace)) or [(None, trace)]
        color = None if importlib.util.find_spec("rich") is not None else False
        for job_id, spans in jobs:
            try:
                found = diagnose(spans)
                self._write(f"== {verdict(job_id, spans, found)}\n")
                if not self.brief:
                    print_waterfall(spans, self.out, width=self.width, color=color)
                    self._write(findings_text(found) + "\n")
            except Exception as e:  # noqa: BLE001 - one odd trace must not stop the receiver
                self._write(f"lk-probe serve: cannot show trace {trace_id} ({type(e).__name__}: {e})\n")
        self._save(trace_id)

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _save(self, trace_id: str) -> None:
        if self.save is None or trace_id not in self._unsaved:
            return
        self._unsaved.discard(trace_id)
        path = self.save / f"{trace_id}.json"
        tmp = path.with_suffix(".json.tmp")
        try:
            tmp.write_text(dumps(self.traces.get(trace_id, ())), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:
            self._write(f"lk-probe serve: cannot save {path} ({e.strerror or e})\n")

    def save_all(self) -> None:
        for trace_id in list(self._unsaved):
            self._save(trace_id)


# -- the transports ----------------------------------------------------------------------------------------
def _http_app(store: Store) -> Any:
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()  # above client_max_size: 413 from aiohttp
        encoding = request.headers.get("Content-Encoding", "")
        ctype = request.content_type
        try:
            if ctype == "application/json":
                text = _decompress_text(body, encoding)
                received = loads(text, where="request") if text.strip() else []
                now = time.time_ns()
                for r in received:
                    r.received_ns = now
                reply = web.Response(text="{}", content_type="application/json")
            elif ctype in ("application/x-protobuf", "application/protobuf", "application/octet-stream"):
                received = records(decode(body, encoding))
                reply = web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                                     content_type="application/x-protobuf")
            else:
                return web.Response(status=415, text="OTLP/HTTP takes application/x-protobuf or application/json")
        except (WireError, OtlpJsonError, ValueError) as e:
            return web.Response(status=400, text=str(e))
        store.add(received)
        return reply

    async def spans(request: web.Request) -> web.Response:
        return web.Response(text=dumps(store.spans()), content_type="application/json")

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get(SERVE_SPANS_PATH, spans)
    return app


def _decompress_text(body: bytes, encoding: str) -> str:
    try:
        return decompress(body, encoding).decode("utf-8")
    except (OSError, EOFError, ValueError, zlib.error) as e:  # UnicodeDecodeError is a ValueError
        raise WireError(f"malformed OTLP JSON body: {e}") from None


async def _grpc_server(store: Store, host: str, port: int) -> tuple[Any, int]:
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    async def export(body: bytes, context: Any) -> bytes:  # raw bytes: a bad body is INVALID_ARGUMENT, not INTERNAL
        try:
            received = records(decode(body))
        except WireError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        store.add(received)
        return ExportTraceServiceResponse().SerializeToString()

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_BODY)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        _EXPORT_METHOD[0], {_EXPORT_METHOD[1]: grpc.unary_unary_rpc_method_handler(export)}),))
    bound = server.add_insecure_port(f"{_bracketed(host)}:{port}")
    if not bound:
        raise OSError(f"cannot listen on {_bracketed(host)}:{port} for gRPC")
    await server.start()
    return server, bound


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a name
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _run(args: argparse.Namespace, out: IO[str]) -> int:
    from aiohttp import web

    save = Path(args.save) if args.save else None
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
    store = Store(out, keep=args.keep, save=save, brief=args.brief, width=args.width)
    host = "127.0.0.1" if args.host == "localhost" else args.host
    runner = web.AppRunner(_http_app(store), access_log=None, auto_decompress=False)
    await runner.setup()
    grpc_server = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        sock = _listen(host, args.http_port)
        http_port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        where = [f"OTLP/HTTP on http://{_bracketed(host)}:{http_port}/v1/traces"]
        if args.grpc_port >= 0:
            grpc_server, grpc_port = await _grpc_server(store, host, args.grpc_port)
            where.append(f"OTLP/gRPC on {_bracketed(host)}:{grpc_port}")
        kept = f"keeping the last {args.keep} traces" + (f", saving them to {save}" if save else "")
        store._write(f"lk-probe serve: {' · '.join(where)} · {kept}\n"
                     f"  point the agent at it: OTEL_EXPORTER_OTLP_ENDPOINT=http://{_bracketed(host)}:{http_port}\n"
                     f"  read what it keeps: lk-probe show http://{_bracketed(host)}:{http_port}\n")
        await stop.wait()
        return 0
    except (OSError, RuntimeError) as e:
        print(f"lk-probe: cannot listen on {_bracketed(host)} ({getattr(e, 'strerror', None) or e})", file=sys.stderr)
        return 2
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=None)
        await runner.cleanup()
        store.save_all()


def main(args: argparse.Namespace) -> int:
    """``lk-probe serve`` (its arguments are declared in lk_probe.__main__)."""
    if args.keep < 1:
        print("lk-probe: --keep must be at least 1", file=sys.stderr)
        return 2
    if importlib.util.find_spec("aiohttp") is None:
        print("lk-probe: serve needs aiohttp: pip install 'lk-probe[cli]'", file=sys.stderr)
        return 2
    return asyncio.run(_run(args, sys.stdout))
