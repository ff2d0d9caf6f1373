"""``lk-probe serve`` as a real process on loopback, fed by the real OTLP exporters (HTTP/protobuf and gRPC) with real
lk_probe spans (report 000's engine records replayed through the production path, under the worker's ``job`` root):
the job's verdict is printed as its root arrives, ``lk-probe diagnose`` reads it back from the server and from what it
saved, and bad payloads get the right error while the server keeps serving."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from lk_probe.__main__ import main
from lk_probe._ids import forced_ids, install_forcing, job_parent_context, root_span_id_for, trace_id_for
from lk_probe._recorder import Recorder

sys.path.insert(0, str(Path(__file__).resolve().parent / "rust"))
from replay import load, replay_rows  # noqa: E402

ROOM = "sip-call-000"


class Serve:
    """``python -m lk_probe serve`` on ephemeral loopback ports; its stdout lines with their arrival times."""

    def __init__(self, saved: Path) -> None:
        self.saved = saved
        self.proc = subprocess.Popen([sys.executable, "-m", "lk_probe", "serve", "--http-port", "0",
                                      "--grpc-port", "0", "--width", "100", "--save", str(saved)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        first = self.wait_line(lambda line: line.startswith("lk-probe serve:"), timeout=30)
        self.http_port = int(re.search(r"http://127\.0\.0\.1:(\d+)/v1/traces", first).group(1))
        self.grpc_port = int(re.search(r"OTLP/gRPC on 127\.0\.0\.1:(\d+)", first).group(1))
        self.base = f"http://127.0.0.1:{self.http_port}"

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append((time.time(), line.rstrip("\n")))
                self._cond.notify_all()

    def wait_line(self, predicate, timeout: float = 10) -> str:
        return self.wait_timed(predicate, timeout)[1]

    def wait_timed(self, predicate, timeout: float = 10) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, line in self.lines:
                    if predicate(line):
                        return t, line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no such line within {timeout}s; got:\n"
                                         + "\n".join(x for _, x in self.lines) + self.proc.stderr.read()[-2000:])
                self._cond.wait(left)

    def output(self) -> str:
        with self._cond:
            return "\n".join(x for _, x in self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    """One server for the module (each start costs a Python start-up): the tests below use distinct jobs."""
    server = Serve(tmp_path_factory.mktemp("saved"))
    yield server
    assert server.stop() == 0, server.proc.stderr.read()


@pytest.fixture
def report_000(capspans, request):
    """Report 000's engine records (livekit 1.1.21) replayed into lk_probe's spans, under the worker's ``job`` root
    (the ids lk_probe derives from the job id): the SDK's ReadableSpans, root last, as the worker exports them."""
    job = "AJ_" + hashlib.sha256(request.node.name.encode()).hexdigest()[:12]  # the tests share one server
    meta, rows = load("real-cloud_region_timeout-1.1.21.jsonl")
    rec = Recorder(job_parent_context(job, 1), attributes={"lk.job_id": job}, label=job)
    replay_rows(meta, rows, rec)
    rec.close_all(t=rows[-1]["t"])
    spans = list(capspans.exporter.get_finished_spans())
    tracer = capspans.provider.get_tracer("lk_probe")
    assert install_forcing(tracer)
    with forced_ids(trace_id_for(job), root_span_id_for(job, 1)):
        root = tracer.start_span("job", attributes={"lk_probe.phase": "job", "lk.job_id": job,
                                                    "lk.pii.room_name": ROOM},
                                 start_time=min(s.start_time for s in spans) - 1000)
    root.end(end_time=max(s.end_time for s in spans) + 1000)
    return job, spans, root


def post(url: str, body: bytes, ctype: str = "application/x-protobuf", **headers: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype, **headers})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_verdict_is_printed_as_the_job_root_arrives_and_read_back(serve, report_000, capsys):
    job, spans, root = report_000
    http = HttpExporter(endpoint=f"{serve.base}/v1/traces", timeout=5)
    grpc_ = GrpcExporter(endpoint=f"127.0.0.1:{serve.grpc_port}", insecure=True, timeout=5)
    assert http.export(spans) == SpanExportResult.SUCCESS  # the job process's spans, over OTLP/HTTP
    time.sleep(0.5)
    assert f"== job {job}" not in serve.output()  # they alone do not complete the job

    sent = time.time()
    assert grpc_.export([root]) == SpanExportResult.SUCCESS  # the worker's root, over OTLP/gRPC
    t, line = serve.wait_timed(lambda x: x.startswith(f"== job {job}"))
    assert t - sent < 1.0
    assert line.startswith(f"== job {job} · room {ROOM} · ") and " · egress_contention: " in line
    serve.wait_line(lambda x: "1. egress_contention" in x)
    out = serve.output()
    assert out.index(line) < out.index("rtc.region_fetch", out.index(line)) < out.index("1. egress_contention")
    http.shutdown()
    grpc_.shutdown()

    # what it keeps, read by the command line from the running server, and from what it saved
    assert main(["diagnose", serve.base, "--job", job, "--json"]) == 0
    (found,) = json.loads(capsys.readouterr().out)
    assert (found["job_id"], found["room"], found["findings"][0]["code"]) == (job, ROOM, "egress_contention")
    assert main(["diagnose", str(serve.saved), "--job", job]) == 0
    assert "1. egress_contention" in capsys.readouterr().out
    assert (serve.saved / f"{root.context.trace_id:032x}.json").is_file()


def test_bad_payloads_get_the_right_error_and_the_server_keeps_serving(serve, report_000):
    job, spans, root = report_000
    url = f"{serve.base}/v1/traces"
    assert post(url, b"\xff\xff\xff garbage")[0] == 400
    assert post(url, b"not gzip", **{"Content-Encoding": "gzip"})[0] == 400
    assert post(url, gzip.compress(b"\x0a\xff"), **{"Content-Encoding": "gzip"})[0] == 400
    assert post(url, b"x", **{"Content-Encoding": "br"})[0] == 400
    assert post(url, b'{"resourceSpans": [', "application/json")[0] == 400
    assert post(url, b'{"hello": 1}', "application/json")[0] == 400
    assert post(url, b"<xml/>", "text/xml")[0] == 415
    assert post(f"{serve.base}/v1/logs", b"")[0] == 404
    assert post(url, b"")[0] == 200  # an empty request is a valid one

    channel = grpc.insecure_channel(f"127.0.0.1:{serve.grpc_port}")
    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    with pytest.raises(grpc.RpcError) as err:
        export(b"\xff\xff\xff garbage", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed OTLP body" in err.value.details()
    channel.close()

    # still serving, on both transports; OTLP JSON too
    assert GrpcExporter(endpoint=f"127.0.0.1:{serve.grpc_port}", insecure=True, timeout=5).export(spans) \
        == SpanExportResult.SUCCESS
    from lk_probe import otlpjson
    from lk_probe.spans import SpanRecord

    status, _ = post(url, otlpjson.dumps([SpanRecord.from_readable(root)]).encode(), "application/json")
    assert status == 200
    assert "egress_contention" in serve.wait_line(lambda x: x.startswith(f"== job {job}"))
    assert serve.proc.poll() is None


def test_a_port_in_use_is_one_line_and_exit_status_2(serve, capsys):
    assert main(["serve", "--http-port", str(serve.http_port), "--grpc-port", "-1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "cannot listen" in err, (out, err)


def test_a_serve_that_is_not_there_is_one_line_and_exit_status_2(capsys):
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["show", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no lk-probe serve answers" in err


def test_import_lk_probe_loads_neither_the_receiver_nor_the_html_report():
    code = ("import sys, lk_probe, lk_probe.findings, lk_probe.otlpjson\n"
            "print([m for m in ('aiohttp', 'grpc', 'lk_probe._serve', 'lk_probe._html', 'lk_probe._report')"
            " if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout.strip()) == (0, "[]"), r.stderr


def test_the_store_keeps_the_last_n_traces_and_a_bounded_number_of_spans_each(tmp_path, monkeypatch):
    from lk_probe import _serve
    from lk_probe.spans import SpanRecord

    monkeypatch.setattr(_serve, "MAX_SPANS", 3)
    out = io.StringIO()
    store = _serve.Store(out, keep=2, save=tmp_path, brief=True)

    def job(n: int, spans: int = 1) -> list[SpanRecord]:
        tid = f"{n:032x}"
        kids = [SpanRecord("job.launch", tid, f"{n:08x}{k:08x}", f"{n:016x}", 10 + k, 20 + k,
                           attributes={"lk.job_id": f"AJ_{n}"}) for k in range(1, spans)]
        return [*kids, SpanRecord("job", tid, f"{n:016x}", None, 1, 100, attributes={"lk.job_id": f"AJ_{n}"})]

    store.add(job(1, spans=5))  # 4 children and the root: the 4th child is one too many, the root is kept
    assert store.dropped == 1 and out.getvalue() == "== job AJ_1 · 0.00 s · ok: no finding\n"
    store.add(job(2))
    store.add(job(3))
    assert out.getvalue().splitlines()[1:] == ["== job AJ_2 · 0.00 s · ok: no finding",
                                               "== job AJ_3 · 0.00 s · ok: no finding"]
    assert [s.trace_id for s in store.spans()] == [f"{2:032x}", f"{3:032x}"]  # trace 1 forgotten, as saved:
    saved = json.loads((tmp_path / f"{1:032x}.json").read_text())["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert sorted(s["name"] for s in saved) == ["job", "job.launch", "job.launch", "job.launch"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{n:032x}.json" for n in (1, 2, 3)]
