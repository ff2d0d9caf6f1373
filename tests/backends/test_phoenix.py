"""A real third-party trace backend, end to end: a real Room (the Rust SDK) against the double, lk_probe's spans sent
over real OTLP/HTTP to an Arize Phoenix server started here on loopback, then read back through Phoenix's own REST
API and compared with what lk_probe produced: names, trace and parent ids, attributes, events, status, times.

Opt-in (Phoenix is a large install and takes long to start): ``python3 scripts/dev.py test --set phoenix`` builds its
environment and runs this file with ``LK_PROBE_PHOENIX`` set to its ``phoenix`` executable; without it, skipped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from rtc.conftest import connected, signal, wait_spans  # noqa: F401 - the fixture is used by name

PHOENIX = os.environ.get("LK_PROBE_PHOENIX", "")
pytestmark = [pytest.mark.e2e, pytest.mark.lk_netns,
              pytest.mark.skipif(not PHOENIX, reason="opt-in: LK_PROBE_PHOENIX=<phoenix executable> "
                                                     "(python3 scripts/dev.py test --set phoenix)")]
START_TIMEOUT = 480.0  # measured 11 s on an idle machine, 99 s to over 240 s on a loaded 2-core one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - a loopback URL built here
        return json.loads(r.read())


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    """A Phoenix server on 127.0.0.1 (its gRPC port binds every address of this test's private network namespace)."""
    port, grpc_port = _free_port(), _free_port()
    work = tmp_path_factory.mktemp("phoenix")
    env = dict(os.environ, PHOENIX_HOST="127.0.0.1", PHOENIX_PORT=str(port), PHOENIX_GRPC_PORT=str(grpc_port),
               PHOENIX_WORKING_DIR=str(work), PHOENIX_TELEMETRY_ENABLED="false")
    log = open(work / "phoenix.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([PHOENIX, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).close()  # noqa: S310
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"phoenix did not come up (exit status {proc.poll()}): "
                                f"{Path(log.name).read_text()[-3000:]}")
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _phoenix_spans(base: str, want: int, timeout: float = 30.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        got = {s["context"]["span_id"]: s for s in _get(base + "/v1/projects/default/spans?limit=1000")["data"]}
        if len(got) >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _us(t_ns: int) -> int:
    return round(t_ns / 1000)


def _iso_us(text: str) -> int:
    from datetime import datetime

    d = datetime.fromisoformat(text)
    return (int(d.timestamp()) * 1_000_000) + d.microsecond


async def test_a_reconnect_with_a_failed_first_attempt_reads_back_intact_from_phoenix(phoenix, lk_double, capspans,
                                                                                      connected):  # noqa: F811
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    capspans.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=phoenix + "/v1/traces"),
                                                            schedule_delay_millis=100))
    # attempt 1 refused with 503 (an ERROR span with a status message), then a server Leave → a resume episode
    lk_double.faults.add("signal_upgrade_status", status=503, count=1)
    room, events = await connected("phoe")
    await signal(lk_double, "send_leave", "phoe", action="RESUME", reason="MIGRATION")
    await events.wait("reconnected", timeout=30)
    await room.disconnect()
    sent = await wait_spans(capspans, lambda s: [e for e in s.named("rtc.reconnect") if e.end]
                            and len(s.named("rtc.attempt")) == 2)
    capspans.provider.force_flush()
    assert any(s.status_code == "ERROR" and s.status_message for s in sent)
    assert any(s.events for s in sent)

    back = _phoenix_spans(phoenix, len(sent))
    assert set(back) == {s.span_id for s in sent}, (len(back), len(sent))
    for s in sent:
        b = back[s.span_id]
        assert (b["name"], b["context"]["trace_id"], b["parent_id"]) == (s.name, s.trace_id, s.parent_id), s.name
        assert b["attributes"] == {k: _plain(v) for k, v in s.attributes.items()}, s.name
        assert [(e["name"], e["attributes"]) for e in b["events"]] == \
            [(e.name, {k: _plain(v) for k, v in e.attributes.items()}) for e in s.events], s.name
        assert abs(_iso_us(b["start_time"]) - _us(s.start_ns)) <= 1 and abs(_iso_us(b["end_time"]) - _us(s.end_ns)) <= 1
        assert (b["status_code"], b["status_message"] or "") == (s.status_code, s.status_message or ""), s.name
    # the phases a user looks for, and their parentage, as Phoenix shows them
    by_name = {}
    for b in back.values():
        by_name.setdefault(b["name"], []).append(b)
    (connect,) = by_name["rtc.connect"]
    attempts = by_name["rtc.attempt"]
    assert {a["parent_id"] for a in attempts} == {connect["context"]["span_id"]}
    assert sorted(a["status_code"] for a in attempts) == ["ERROR", "UNSET"]
    (episode,) = [e for e in by_name["rtc.reconnect"] if e["attributes"].get("lk_probe.outcome") == "recovered"]
    assert episode["attributes"]["lk_probe.reconnect.reason"].lower() == "migration"
