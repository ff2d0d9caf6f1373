"""The region fetch exercised for real — a *.livekit.cloud host name resolved to the double
inside the test's namespace (private /etc/hosts), the double serving /settings/regions and able to hang it. The SDK
fetches regions over plain HTTP for a ws:// URL, so no TLS is involved.

This is the first user report, reproduced: the signal WebSocket connect hits its 5 s timeout, then the region fetch
its 3 s timeout — 8 s before the agent could join."""

from __future__ import annotations

import time

import pytest

from lk_probe.testing.netns import cloud_host as _cloud

from .conftest import V112, codes, wait_spans

pytestmark = [pytest.mark.rtc, pytest.mark.lk_netns, pytest.mark.e2e]


async def test_signal_timeout_then_region_fetch_timeout_is_the_8s_of_the_sip_report(lk_double, capspans):
    from livekit import rtc

    host = _cloud(3)  # one host per test: 1.1.21+ cache region lists per host
    lk_double.faults.add("signal_upgrade_delay", delay=8.0, count=1)
    lk_double.faults.add("region_hang", count=1)
    room = rtc.Room()
    t0 = time.monotonic()
    await room.connect(f"ws://{host}:{lk_double.port}", lk_double.token("sip-agent", "sip-call"))
    took = time.monotonic() - t0
    await room.disconnect()
    spans = await wait_spans(capspans, lambda s: len(s.named("rtc.attempt")) >= 2 and s.named("rtc.region_fetch"))
    a1 = spans.phases("rtc.attempt")[0]
    sig = [s for s in spans.children(a1) if s.name == "rtc.signal"][0]
    region = spans.phase("rtc.region_fetch")
    assert sig.error and sig.attributes["error.type"] == "timeout" and 4.7 < sig.duration < 5.6
    assert sig.attributes["server.address"] == host
    assert region.parent_id == a1.span_id and region.error
    assert region.attributes["error.type"] == "region_fetch_timeout"
    assert region.attributes["lk_probe.inferred"] is True
    assert 2.7 < region.duration < 3.6, region.duration  # the SDK's 3 s region fetch timeout
    assert region.start >= sig.end - 0.01
    assert 7.5 < a1.duration < 9.5, a1.duration  # 5 s + validate + 3 s: the 8 s of the report
    # the attempt failed because of the signal timeout: 1.1.2's engine reports the region error in its place, and
    # lk_probe unmasks it (the masking text stays in the status message)
    assert a1.attributes["error.type"] == "timeout"
    if V112:
        assert "region fetch timed out" in a1.status_message
    assert not spans.phases("rtc.attempt")[1].error
    assert 8.0 < took < 11.0
    assert lk_double.events.of_kind("fault_fired", lambda e: e["name"] == "region_hang")
    # the diagnosis: egress contention, with the 5 s and the 3 s as its evidence
    from lk_probe.findings import diagnose

    first = diagnose(spans)[0]
    assert first.code == "egress_contention" and first.span_id == a1.span_id, first
    assert f"to {host} timed out after 5." in first.evidence and "timed out after 3." in first.evidence
    assert "signal_connect_timeout" not in codes(spans)  # explained by the finding above


async def test_successful_region_fetch_then_fallback_connect(lk_double, capspans):
    from livekit import rtc

    host = _cloud(4)
    lk_double.faults.add("signal_upgrade_status", status=503, count=1)
    room = rtc.Room()
    await room.connect(f"ws://{host}:{lk_double.port}", lk_double.token("sip-agent-2", "sip-call-2"))
    await room.disconnect()
    spans = await wait_spans(capspans, lambda s: s.named("rtc.region_fetch") and len(s.named("rtc.signal")) >= 2)
    region = spans.phase("rtc.region_fetch")
    first, second = spans.phases("rtc.signal")[:2]
    assert first.error and first.attributes["error.type"] == "http_5xx"
    assert not region.error and region.attributes["lk_probe.inferred"] is True
    assert not second.error and second.start >= region.end - 0.01  # the region URL's connect follows the fetch
    ev = lk_double.events.of_kind("region_fetch", lambda e: e["identity"] == "sip-agent-2")
    assert ev and abs(ev[0].t - region.start) < 1.0
