"""A hung signal upgrade — the stall record is in a real OTLP receiver at most 1 s after the
budget is crossed, while Room.connect is still pending (real Rust SDK, server double, OTLP/HTTP)."""

from __future__ import annotations

import asyncio

import pytest


pytestmark = [pytest.mark.rtc, pytest.mark.lk_netns]  # the connect completes: real ICE


async def test_stall_record_arrives_while_the_connect_is_still_pending(lk_double, install_from_env, otlp_receiver):
    from livekit import rtc

    install_from_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp_receiver.http_endpoint, LK_PROBE_BUDGET_RTC_SIGNAL="1.0",
                     LK_PROBE_STRICT="1")
    rx = otlp_receiver
    # the upgrade is held 3 s (under the SDK's 5 s timeout): the 1 s budget is crossed while the connect is pending,
    # and the connect then completes — a connect abandoned half-way would leave the engine retrying in this process
    lk_double.faults.add("signal_upgrade_delay", delay=3.0, count=1)
    room = rtc.Room()
    connect = asyncio.create_task(room.connect(lk_double.url, lk_double.token("stuck", "stall-room")))
    try:
        stall = await asyncio.to_thread(rx.wait_for_phase, "stall", 10,
                                        lambda s: s.attributes.get("lk_probe.stall.phase") == "rtc.signal")
        pending = not connect.done()
        await connect
    finally:
        await room.disconnect()
    assert pending, "the stall record must arrive while the connect is still pending"
    crossed = stall.start + stall.attributes["lk_probe.stall.budget"]  # the record's span starts with the phase
    lag = stall.received_ns / 1e9 - crossed
    assert 0 <= lag < 1.0, lag
    assert stall.attributes["lk_probe.stall.budget"] == 1.0
    assert stall.parent_id is not None  # under the open rtc.signal span, exported when it ends
    sig = rx.wait_for_phase("rtc.signal", 10)
    assert stall.parent_id == sig.span_id and sig.duration > 2.5
    assert stall.name == "stall rtc.signal" and stall.start_ns == sig.start_ns
