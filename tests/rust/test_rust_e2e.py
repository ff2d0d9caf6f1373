"""End to end through lk_probe.install() (the Room.connect patch + Recorder + OTLP export) and this bridge:
a real Room against the server double whose first signal upgrade is held; the exported spans show the failed
attempt with its signal timeout and validate, the second attempt, and the user's `livekit` handler still gets no
Rust DEBUG record. Needs the private network namespace."""

from __future__ import annotations

import asyncio
import logging

import pytest

import lk_probe
from lk_probe import _provider
from lk_probe.testing import netns

pytestmark = [pytest.mark.lk_netns, pytest.mark.rtc, pytest.mark.skipif(not netns.in_private_netns(),
                                                    reason="needs the private network namespace (real ICE)")]


class Catch(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.levels = []

    def emit(self, record):
        self.levels.append((record.levelno, record.getMessage()))


@pytest.fixture
def probe(monkeypatch, otlp_receiver):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp_receiver.http_endpoint)
    monkeypatch.setenv("LK_PROBE_SET_GLOBAL_PROVIDER", "false")
    monkeypatch.setenv("LK_PROBE_STRICT", "1")
    monkeypatch.delenv("LIVEKIT_RTC_DEBUG", raising=False)
    lg = logging.getLogger("livekit")
    h = Catch()
    lg.addHandler(h)
    old = lg.level
    lg.setLevel(logging.DEBUG)
    lk_probe.install()
    yield otlp_receiver, h
    p = _provider.current()
    lk_probe.uninstall()
    if p is not None:
        p.shutdown()
    lg.removeHandler(h)
    lg.setLevel(old)


async def test_signal_timeout_once_exported(lk_double, probe):
    from livekit import rtc

    rx, handler = probe
    lk_double.faults.add("signal_upgrade_delay", delay=8.0, count=1)
    room = rtc.Room()
    try:
        await room.connect(lk_double.url, lk_double.token("e2e", "e2e-room"))
        await asyncio.sleep(0.3)
    finally:
        await room.disconnect()
    p = _provider.current()
    if p is not None:
        p.force_flush()
    await asyncio.to_thread(rx.wait_for, lambda s: s.phase == "rtc.attempt" and
                            s.attributes.get("lk_probe.attempt") == 2, 10)
    await asyncio.to_thread(rx.wait_for, lambda s: s.phase == "rtc.connect", 10)  # its export waits for the ICE read
    spans = rx.spans()
    attempts = sorted(spans.phases("rtc.attempt"), key=lambda s: s.attributes["lk_probe.attempt"])
    assert [(a.attributes["lk_probe.attempt"], a.error) for a in attempts] == [(1, True), (2, False)]
    assert attempts[0].attributes["error.type"] == "timeout"
    connect = spans.phase("rtc.connect")
    assert all(a.parent_id == connect.span_id for a in attempts)
    sig = [s for s in spans.phases("rtc.signal") if s.parent_id == attempts[0].span_id]
    assert len(sig) == 1 and sig[0].error and 4.5 < sig[0].duration < 5.6
    assert sig[0].attributes["server.address"] == "127.0.0.1"
    val = [s for s in spans.phases("rtc.validate") if s.parent_id == attempts[0].span_id]
    assert len(val) == 1 and val[0].attributes["lk_probe.inferred"] is True
    assert [s for s in spans.phases("rtc.join") if s.parent_id == attempts[1].span_id]
    # the bridge read DEBUG records for the phases, the user's handler got none of them
    assert not any(lvl == logging.DEBUG and msg.startswith(("libwebrtc", "livekit")) for lvl, msg in handler.levels)
    assert any("signal connection failed" in msg for _, msg in handler.levels)  # WARN still forwarded
