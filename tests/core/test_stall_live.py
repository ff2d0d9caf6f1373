"""Issue 5, acceptance 3: a hung signal upgrade — the stall record is in a real OTLP receiver at most 1 s after the
budget is crossed, while Room.connect is still pending (real Rust SDK, server double, OTLP/HTTP)."""

from __future__ import annotations

import asyncio
import time

import pytest


pytestmark = pytest.mark.rtc


async def test_stall_record_arrives_while_the_connect_is_still_pending(lk_double, install_from_env, otlp_receiver):
    from livekit import rtc

    install_from_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp_receiver.http_endpoint, LK_PROBE_BUDGET_RTC_SIGNAL="1.0",
                     LK_PROBE_STRICT="1")
    rx = otlp_receiver
    lk_double.faults.add("signal_upgrade_hang", count=None)
    room = rtc.Room()
    connect = asyncio.create_task(room.connect(lk_double.url, lk_double.token("stuck", "stall-room")))
    try:
        stall = await asyncio.to_thread(rx.wait_for_phase, "stall", 10,
                                        lambda s: s.attributes.get("lk_probe.stall.phase") == "rtc.signal")
        pending = not connect.done()
    finally:
        connect.cancel()
        try:
            await connect
        except BaseException:  # noqa: BLE001 - cancelled or failed: either way the connect is over
            pass
        await room.disconnect()
    assert pending, "the stall record must arrive while the connect is still pending"
    signal_start = stall.start - stall.attributes["lk_probe.stall.elapsed"]
    crossed = signal_start + stall.attributes["lk_probe.stall.budget"]
    lag = stall.received_ns / 1e9 - crossed
    assert 0 <= lag < 1.0, lag
    assert stall.attributes["lk_probe.stall.budget"] == 1.0
    assert stall.parent_id is not None  # under the open rtc.signal span (exported later, or never)
    assert time.time() - stall.received_ns / 1e9 < 30
