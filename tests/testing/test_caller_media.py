"""The double's simulated caller: a real ``livekit.rtc.Room`` subscribes to its microphone and hears the tone
(judged on the samples), over v1 (single PC) and v0 (subscriber PC), with the caller there before the client and
joining after it; and each media fault does what it says. Needs the private netns."""

from __future__ import annotations

import asyncio

import pytest

from lk_probe.testing import audio

from rtc_helpers import no_leaks, V1_DEFAULT, call, clients, needs_netns, rtc, wait_event  # noqa: F401

pytestmark = [needs_netns, pytest.mark.rtc, pytest.mark.usefixtures("no_leaks")]

MODES = ["v1", "v0"] if V1_DEFAULT else ["v0"]


async def _subscribed(room) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    room.on("track_subscribed", lambda track, pub, p: fut.done() or fut.set_result((track, pub, p)))
    return fut


@pytest.mark.parametrize("order", ["caller_first", "caller_later"])
@pytest.mark.parametrize("mode", MODES)
async def test_client_hears_the_callers_tone(lk_double, mode, order):
    d = lk_double
    async with clients(d) as c:
        if order == "caller_first":
            await call(d, d.signal.add_caller, "r1", "caller", hz=440.0)
        room, _ = c.new_room()
        subscribed = await _subscribed(room)
        await room.connect(d.url, d.token("alice", "r1"), rtc.RoomOptions(single_peer_connection=(mode == "v1")))
        if order == "caller_later":
            await call(d, d.signal.add_caller, "r1", "caller", hz=440.0)
        track, pub, participant = await asyncio.wait_for(subscribed, 10)
        published = await wait_event(d, "caller_track_published")
        assert participant.identity == "caller" and pub.sid == track.sid == published["track"]
        assert pub.source == rtc.TrackSource.SOURCE_MICROPHONE
        sent = await wait_event(d, "caller_track_sent", lambda e: e["to"] == "alice")
        assert sent["track"] == track.sid
        samples = await audio.hear(track, 0.5, until_audible=3.0)
        heard = audio.tone(samples)
        assert heard.audible(0.05), heard
        assert abs(heard.hz - 440.0) < 10, heard
        await wait_event(d, "caller_rtp_started", lambda e: e["to"] == "alice")


async def _connect_and_subscribe(d, c, mode: str, timeout: float = 10):
    room, _ = c.new_room()
    subscribed = await _subscribed(room)
    await room.connect(d.url, d.token("alice", "r1"), rtc.RoomOptions(single_peer_connection=(mode == "v1")))
    return room, subscribed


@pytest.mark.parametrize("mode", MODES)
async def test_no_rtp_is_silence_on_a_subscribed_track(lk_double, mode):
    d = lk_double
    d.faults.add("caller_no_rtp", identity="caller")
    async with clients(d) as c:
        await call(d, d.signal.add_caller, "r1", "caller")
        _, subscribed = await _connect_and_subscribe(d, c, mode)
        track, _, _ = await asyncio.wait_for(subscribed, 10)
        await wait_event(d, "caller_rtp_withheld", lambda e: e["to"] == "alice")
        heard = audio.tone(await audio.hear(track, 1.0))
        assert not heard.audible(0.001), heard  # frames come, but they are silence
        assert not d.events.of_kind("caller_rtp_started")


@pytest.mark.parametrize("mode", MODES)
async def test_rtp_gap_then_resume(lk_double, mode):
    d = lk_double
    d.faults.add("caller_rtp_gap", identity="caller", after=0.5, gap=1.0)
    async with clients(d) as c:
        await call(d, d.signal.add_caller, "r1", "caller")
        _, subscribed = await _connect_and_subscribe(d, c, mode)
        track, _, _ = await asyncio.wait_for(subscribed, 10)
        samples = await audio.hear(track, 2.0, until_audible=3.0)
        stopped = await wait_event(d, "caller_rtp_stopped", lambda e: e["to"] == "alice")
        resumed = await wait_event(d, "caller_rtp_resumed", lambda e: e["to"] == "alice")
        assert 0.9 < resumed.t - stopped.t < 1.5
        # 100 ms windows: loud, then silence for the gap (less NetEq's concealment tail), then loud again. Counted in
        # all, not as one run: on a busy machine a late packet or a concealment burst can split the heard gap in two
        windows = [audio.tone(samples[i:i + 4800]).audible(0.01) for i in range(0, samples.size - 4799, 4800)]
        assert windows[0] and windows[-1], windows
        assert 6 <= windows.count(False) <= 14, windows


@pytest.mark.parametrize("mode", MODES)
async def test_no_subscription_and_no_publish(lk_double, mode):
    d = lk_double
    d.faults.add("caller_no_subscription", identity="caller")
    d.faults.add("caller_no_publish", identity="quiet")
    async with clients(d) as c:
        room, subscribed = await _connect_and_subscribe(d, c, mode)
        published = asyncio.get_running_loop().create_future()
        room.on("track_published", lambda pub, p: published.done() or published.set_result((pub, p)))
        await call(d, d.signal.add_caller, "r1", "caller")
        await call(d, d.signal.add_caller, "r1", "quiet")
        pub, p = await asyncio.wait_for(published, 10)
        assert p.identity == "caller"
        await asyncio.sleep(1.0)  # a subscription would have completed in < 0.3 s (checked by the test above)
        assert not subscribed.done()
        quiet = next(p for p in room.remote_participants.values() if p.identity == "quiet")
        assert not quiet.track_publications
        assert not d.events.of_kind("caller_track_sent")
        assert [e["identity"] for e in d.events.of_kind("caller_track_published")] == ["caller"]
