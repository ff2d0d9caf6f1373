"""The phases inside Room.connect, from the real Rust SDK against the double, per fault."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import pytest

from lk_probe.testing.secrets import find_secrets

from .conftest import V112, codes, signal, wait_spans

pytestmark = [pytest.mark.rtc, pytest.mark.lk_netns, pytest.mark.e2e]


@pytest.mark.smoke("connect")
async def test_clean_connect_has_its_phases_in_order(lk_double, capspans, connected):
    await connected("alice")
    # Rust records reach Python a few ms after the connect callback: wait for the phases, don't race them
    spans = await wait_spans(capspans, lambda s: s.named("rtc.join") and s.named("rtc.connect"), timeout=5)
    connect = spans.phase("rtc.connect")
    attempt = spans.phase("rtc.attempt")
    sig, join = spans.phase("rtc.signal"), spans.phase("rtc.join")
    assert not connect.error and attempt.parent_id == connect.span_id
    for child in (sig, join):
        assert child.parent_id == attempt.span_id, child.name
    spans.assert_order("rtc.signal", "rtc.join")
    assert attempt.attributes["lk_probe.attempt"] == 1
    u = urlsplit(lk_double.url)
    assert sig.attributes["server.address"] == u.hostname and sig.attributes["server.port"] == u.port
    # the path the SDK used (/rtc/v1 from livekit 1.1.3 on by default, but not in every release after), as the
    # double saw it
    path = "v1" if lk_double.events.of_kind("signal_request")[0]["path"].startswith("/rtc/v1") else "v0"
    assert sig.attributes["lk_probe.signal.path"] == path
    assert join.attributes["lk_probe.server.region"] == lk_double.region
    assert connect.start <= sig.start and join.end <= connect.end
    # the PC's records often arrive after the connect callback (livekit's FFI hands its log over in batches): the
    # phase is still there, in the attempt, after the join, ending by the time the connect returned
    spans = await wait_spans(capspans, lambda s: s.named("rtc.pc"), timeout=5)
    for pc in spans.named("rtc.pc"):
        assert pc.parent_id == attempt.span_id and pc.start >= join.start and pc.end <= connect.end
        assert pc.attributes["lk_probe.pc"] == ("publisher" if path == "v1" else "subscriber")
    assert find_secrets(spans, extra=[lk_double.api_secret]) == []
    assert codes(spans) == []  # a healthy connect gets no finding


def _successful_attempts(spans):
    """Each successful rtc.attempt with its rtc.pc spans, in start order (one per successful connect)."""
    attempts = sorted((a for a in spans.named("rtc.attempt") if not a.error), key=lambda a: a.start_ns)
    return [(a, [s for s in spans.children(a) if s.name == "rtc.pc"]) for a in attempts]


async def test_twenty_connects_each_have_their_pc_phase_ending_by_the_return(lk_double, capspans):
    """Every successful connect shows its PC phase, also when the PC's records reach Python after the connect call
    returned (then inferred, ending when the attempt ended): each rtc.pc ends no later than the call returned."""
    from livekit import rtc

    from lk_probe._rust import bridge

    connected_records: list[int] = []  # arrival times of 'connection change, Connected X' records

    def tap(t, level, target, line, module_path, message):
        if message.startswith("connection change, Connected"):
            connected_records.append(t)

    bridge.set_tap(tap)
    returned = []
    try:
        for i in range(20):
            room = rtc.Room()
            started = time.time_ns()
            await room.connect(lk_double.url, lk_double.token(f"pc-{i}", "pc-phase"))
            returned.append(time.time_ns())
            # the records carry no room: they go to the newest room's machine. Keep this room until its PC's
            # 'Connected' record (often after the connect returned) has arrived, so that it cannot reach the next one
            deadline = time.monotonic() + 4
            while not any(t > started for t in connected_records) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            try:
                await wait_spans(capspans, lambda s: len(_successful_attempts(s)) > i and _successful_attempts(s)[i][1],
                                 timeout=1)
            except TimeoutError:
                pass  # asserted below, for all twenty
            await room.disconnect()
    finally:
        bridge.set_tap(None)
    spans = capspans.spans
    connects = _successful_attempts(spans)
    assert len(connects) == 20
    missing = [i for i, (_, pcs) in enumerate(connects) if not pcs]
    assert not missing, f"connects without rtc.pc: {missing}\n{spans.summary()}"
    late = []
    for (attempt, pcs), ret in zip(connects, returned):
        for pc in pcs:
            assert not pc.error and attempt.start_ns <= pc.start_ns <= pc.end_ns <= ret
            assert pc.attributes["lk_probe.pc"] == ("subscriber" if V112 else "publisher")
            late.append(pc.attributes.get("lk_probe.inferred_from", "records before the callback"))
    print({why: late.count(why) for why in set(late)})


@pytest.mark.smoke("signal_timeout")
async def test_signal_upgrade_delayed_8s_once_fails_attempt_1_then_connects(lk_double, capspans, connected):
    lk_double.faults.add("signal_upgrade_delay", delay=8.0, count=1)
    t0 = time.monotonic()
    await connected("bob")
    took = time.monotonic() - t0
    spans = await wait_spans(capspans, lambda s: len(s.named("rtc.attempt")) == 2 and s.named("rtc.join")
                             and s.named("rtc.connect"), 5)
    a1, a2 = spans.phases("rtc.attempt")
    s1 = [s for s in spans.children(a1) if s.name == "rtc.signal"][0]
    assert a1.error and a1.attributes["error.type"] == "timeout"
    assert s1.error and s1.attributes["error.type"] == "timeout"
    assert 4.7 < s1.duration < 5.6, s1.duration  # the SDK's 5 s signal connect timeout
    assert not a2.error and a2.attributes["lk_probe.attempt"] == 2
    validate = spans.phase("rtc.validate")
    assert validate.parent_id == a1.span_id and validate.attributes["lk_probe.inferred"] is True
    assert validate.start >= s1.end - 0.01
    assert not spans.phase("rtc.connect").error  # a later attempt succeeded
    assert 5.0 < took < 8.0
    # livekit 1.1.2 reports its token-less validate's 401 in place of the timeout: an artefact, said as such
    assert codes(spans) == ["signal_connect_timeout"] + (["auth_artefact"] if V112 else [])
    fired = lk_double.events.of_kind("fault_fired", lambda e: e["name"] == "signal_upgrade_delay")
    assert len(fired) == 1 and abs(fired[0].t - s1.start) < 0.5
    # stall records of the held signal connect (budget 2 s): bars from the phase's start to the record, ≈2 s and ≈4 s
    # long, named after the phase, exported while rtc.signal was still open
    stalls = sorted((s for s in spans.phases("stall") if s.parent_id == s1.span_id), key=lambda s: s.end_ns)
    assert [s.name for s in stalls] == ["stall rtc.signal"] * 2
    assert [s.attributes["lk_probe.stall.count"] for s in stalls] == [1, 2]
    for stall, budget in zip(stalls, (2.0, 4.0)):
        assert stall.start_ns == s1.start_ns
        assert budget - 0.05 <= stall.duration < budget + 0.5, (budget, stall.duration)
        assert stall.end < s1.end - 0.5


async def test_v1_answered_404_falls_back_to_v0_in_the_same_attempt(lk_double, capspans, connected):
    lk_double.faults.add("signal_upgrade_status", status=404, path="v1", count=None)
    await connected("carol", single_peer_connection=True)
    spans = await wait_spans(capspans, lambda s: len(s.named("rtc.signal")) == 2 and s.named("rtc.connect"), 5)
    attempt = spans.phase("rtc.attempt")
    v1, v0 = spans.phases("rtc.signal")
    assert (v1.attributes["lk_probe.signal.path"], v0.attributes["lk_probe.signal.path"]) == ("v1", "v0")
    assert v1.error and v1.attributes["error.type"] == "http_404"
    assert not v0.error and v0.parent_id == attempt.span_id == v1.parent_id
    assert not attempt.error
    assert lk_double.events.of_kind("signal_rejected", lambda e: e["status"] == 404)
    assert codes(spans) == ["v1_fallback"]


async def test_join_response_delayed_3s_shows_as_a_3s_join(lk_double, capspans, connected):
    lk_double.faults.add("join_response_delay", delay=3.0, count=1)
    await connected("dave")
    spans = await wait_spans(capspans, lambda s: s.named("rtc.join"), 5)
    join = spans.phase("rtc.join")
    assert 2.9 < join.duration < 3.6, join.duration
    assert not join.error
    assert codes(spans)[0] == "slow_join_response"


@pytest.mark.slow
async def test_ice_that_never_completes_fails_every_attempt_on_the_pc(lk_double, capspans):
    from livekit import rtc

    lk_double.faults.add("ice_never", count=None)
    room = rtc.Room()
    with pytest.raises(Exception) as err:
        await asyncio.wait_for(room.connect(lk_double.url, lk_double.token("erin", "ice")), 90)
    await room.disconnect()
    spans = await wait_spans(capspans, lambda s: s.named("rtc.connect") and s.phase("rtc.connect").end)
    connect = spans.phase("rtc.connect")
    attempts = spans.phases("rtc.attempt")
    assert len(attempts) == 4 and all(a.error for a in attempts)
    for a in attempts:
        assert a.attributes["error.type"] == "pc_timeout"
        assert 14.5 < a.duration < 17.5, a.duration  # the SDK's 15 s PC connect limit
        # a PC that got as far as "Connecting" has its own span (1.1.21+); 1.1.2's subscriber PC never starts ICE
        for pc in (s for s in spans.children(a) if s.name == "rtc.pc"):
            assert pc.error and pc.attributes["error.type"] == "pc_timeout" and 14.0 < pc.duration < 16.5
    assert connect.error and connect.attributes["error.type"] in ("timeout", "pc_timeout")
    assert "wait_pc_connection timed out" in str(err.value)
    assert not lk_double.events.of_kind("pc_state", lambda e: e["state"] == "connected")  # the fault held
    assert codes(spans)[0] == "ice_never_connects"


async def test_a_connect_inside_suppress_instrumentation_emits_no_span(lk_double, capspans, connected):
    """OpenTelemetry's ``suppress_instrumentation()``: the connect made inside it, its engine phases and its room's
    later life give no span; a connect after it is traced as usual (so the capture is live)."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        quiet, events = await connected("quiet", room="quiet")
    await signal(lk_double, "send_leave", "quiet", action="RESUME", room="quiet")  # an episode in the quiet room
    await events.wait("reconnected", timeout=30)
    await asyncio.sleep(0.5)  # the FFI hands the engine's records over in batches: let the quiet room's arrive
    await asyncio.wait_for(quiet.disconnect(), 10)
    assert len(capspans.spans) == 0, capspans.spans.summary()
    await connected("loud", room="loud")
    spans = await wait_spans(capspans, lambda s: s.named("rtc.join") and s.named("rtc.connect"), timeout=5)
    assert len(spans.named("rtc.connect")) == 1 and len({s.trace_id for s in spans}) == 1, spans.summary()

