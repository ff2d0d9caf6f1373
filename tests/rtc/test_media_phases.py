"""Media after the connect, for a plain ``livekit.rtc.Room`` against the double's simulated caller: the first remote
participant, the first audio track subscribed and its first RTP, silences of inbound RTP (exported while they last,
ended when audio returns), and each caller fault stalling the phase it concerns. Real Rust SDK, real RTP."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import rtc_version, signal, wait_spans

pytestmark = [pytest.mark.rtc, pytest.mark.lk_netns]

STATS = rtc_version() >= (1, 1, 21)
needs_stats = pytest.mark.skipif(not STATS, reason="livekit 1.1.2 can abort reading a silent receiver's stats: "
                                                   "first audio and silences are not traced there")


def _ended(name):
    return lambda spans: [s for s in spans.named(name) if s.end]


def _silence_stall(spans):
    return [s for s in spans.named("stall media.silence")]


@needs_stats
async def test_caller_first_then_phases_in_order(lk_double, capspans, connected):
    await signal(lk_double, "add_caller", "media", "caller")
    room, _ = await connected("agent-m", "media")
    spans = await wait_spans(capspans, _ended("media.first_audio"), timeout=10)
    wait, sub, first = (spans.phase(n) for n in ("media.participant_wait", "media.subscribe", "media.first_audio"))
    published = lk_double.events.of_kind("caller_track_published")[0]
    caller = lk_double.events.of_kind("caller_joined")[0]
    assert wait.attributes["lk_probe.media.present_at_connect"] is True and wait.duration < 0.05
    assert wait.attributes["lk_probe.media.participant_sid"] == caller["sid"]
    assert sub.attributes["lk_probe.media.track_sid"] == published["track"] == first.attributes[
        "lk_probe.media.track_sid"]
    assert sub.attributes["lk_probe.media.track_source"] == "microphone"
    assert not sub.error and not first.error and first.attributes["lk_probe.media.packets"] > 0
    assert sub.end <= first.start + 1e-3 and first.duration < 1.0
    started = lk_double.events.of_kind("caller_rtp_started", lambda e: e["to"] == "agent-m")[0]
    assert started.t - 0.1 < first.end < started.t + 0.6  # the first packet, read from the receiver's stats
    assert not spans.named("media.silence")


@needs_stats
async def test_caller_later_waits_for_the_participant(lk_double, capspans, connected):
    room, _ = await connected("agent-l", "media")
    await asyncio.sleep(0.5)
    await signal(lk_double, "add_caller", "media", "caller")
    spans = await wait_spans(capspans, _ended("media.first_audio"), timeout=10)
    wait = spans.phase("media.participant_wait")
    joined = lk_double.events.of_kind("caller_joined")[0]
    assert wait.attributes["lk_probe.media.present_at_connect"] is False
    assert abs(wait.end - joined.t) < 0.3 and wait.duration > 0.4
    sub = spans.phase("media.subscribe")
    published = lk_double.events.of_kind("caller_track_published")[0]
    assert abs(sub.start - published.t) < 0.3 and sub.duration < 1.0


@needs_stats
async def test_rtp_gap_is_one_silence_exported_while_it_lasts(lk_double, capspans, connected):
    lk_double.faults.add("caller_rtp_gap", identity="caller", after=1.0, gap=2.5)
    await signal(lk_double, "add_caller", "media", "caller")
    await connected("agent-g", "media")
    stopped = await lk_double.events.wait_for("caller_rtp_stopped", timeout=10)
    spans = await wait_spans(capspans, _silence_stall, timeout=5)
    assert not lk_double.events.of_kind("caller_rtp_resumed"), "the silence's record must come while it lasts"
    stall = _silence_stall(spans)[0]
    assert stall.attributes["lk_probe.stall.phase"] == "media.silence"
    resumed = await lk_double.events.wait_for("caller_rtp_resumed", timeout=10)
    spans = await wait_spans(capspans, _ended("media.silence"), timeout=5)
    (silence,) = spans.named("media.silence")
    assert silence.attributes["lk_probe.outcome"] == "resumed" and not silence.error
    gap = resumed.t - stopped.t
    assert abs(silence.duration - gap) < 0.5, (silence.duration, gap)
    assert abs(silence.start - stopped.t) < 0.5


@needs_stats
async def test_no_rtp_is_silence_from_the_subscription_and_no_first_audio(lk_double, capspans, connected,
                                                                         monkeypatch):
    monkeypatch.setenv("LK_PROBE_BUDGET_MEDIA_FIRST_AUDIO", "0.5")
    lk_double.faults.add("caller_no_rtp", identity="caller")
    await signal(lk_double, "add_caller", "media", "caller")
    await connected("agent-n", "media")
    spans = await wait_spans(capspans, lambda s: _silence_stall(s) and s.named("stall media.first_audio"), timeout=10)
    sub = spans.phase("media.subscribe")
    stall = _silence_stall(spans)[0]
    assert abs(stall.start - sub.end) < 0.05  # silent from the subscription on
    assert not spans.named("media.first_audio")  # still open: no first audio was invented


async def test_no_subscription_stalls_the_subscribe_phase(lk_double, capspans, connected, monkeypatch):
    monkeypatch.setenv("LK_PROBE_BUDGET_MEDIA_SUBSCRIBE", "0.5")
    lk_double.faults.add("caller_no_subscription", identity="caller")
    await signal(lk_double, "add_caller", "media", "caller")
    await connected("agent-s", "media")
    spans = await wait_spans(capspans, lambda s: s.named("stall media.subscribe"), timeout=10)
    assert spans.phase("media.participant_wait").attributes["lk_probe.media.present_at_connect"] is True
    assert not spans.named("media.first_audio") and not spans.named("stall media.first_audio")


async def test_caller_never_publishes_stalls_the_track_wait(lk_double, capspans, connected, monkeypatch):
    monkeypatch.setenv("LK_PROBE_BUDGET_MEDIA_PARTICIPANT_WAIT", "0.3")
    monkeypatch.setenv("LK_PROBE_BUDGET_MEDIA_TRACK_WAIT", "0.5")
    lk_double.faults.add("caller_no_publish", identity="caller")
    await connected("agent-q", "media")
    await wait_spans(capspans, lambda s: s.named("stall media.participant_wait"), timeout=5)
    await signal(lk_double, "add_caller", "media", "caller")
    spans = await wait_spans(capspans, lambda s: s.named("stall media.track_wait"), timeout=5)
    wait = spans.phase("media.participant_wait")
    assert not wait.error and wait.attributes["lk_probe.media.present_at_connect"] is False
    assert spans.named("stall media.track_wait")[0].parent_id is not None
    assert not spans.named("media.subscribe") and not spans.named("stall media.subscribe")


@pytest.mark.skipif(STATS, reason="livekit 1.1.2 only")
async def test_old_sdk_never_reads_a_silent_receivers_stats(lk_double, capspans, connected, caplog):
    # livekit 1.1.2's FFI can abort the whole process reading the stats of a receiver that has had no RTP
    lk_double.faults.add("caller_no_rtp", identity="caller")
    await signal(lk_double, "add_caller", "media", "caller")
    room, _ = await connected("agent-o", "media")
    spans = await wait_spans(capspans, _ended("media.subscribe"), timeout=10)
    await asyncio.sleep(1.0)  # the process is still alive: nothing read the receiver's stats
    assert not spans.named("media.first_audio") and not capspans.spans.named("stall media.first_audio")
    assert "cannot read a track's RTP stats safely" in caplog.text


@needs_stats
async def test_own_first_published_audio(lk_double, capspans, connected):
    from livekit import rtc

    room, _ = await connected("agent-p", "media")
    source = rtc.AudioSource(48000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("agent-voice", source)
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    pub = await room.local_participant.publish_track(track, opts)
    frame = rtc.AudioFrame.create(48000, 1, 480)

    async def feed():
        while True:
            await source.capture_frame(frame)

    feeder = asyncio.create_task(feed())
    try:
        spans = await wait_spans(capspans, _ended("media.publish"), timeout=10)
    finally:
        feeder.cancel()
    published = spans.phase("media.publish")
    assert not published.error and published.attributes["lk_probe.media.packets"] > 0
    assert published.attributes["lk_probe.media.track_sid"] == pub.sid
    assert published.attributes["lk_probe.media.track_source"] == "microphone" and published.duration < 2.0


@needs_stats
async def test_resume_episode_carries_the_time_until_audio_flowed_again(lk_double, capspans, connected):
    await signal(lk_double, "add_caller", "media", "caller")
    room, events = await connected("agent-r", "media")
    await wait_spans(capspans, _ended("media.first_audio"), timeout=10)
    await signal(lk_double, "send_leave", "agent-r", action="RESUME")
    await events.wait("reconnected", timeout=30)
    spans = await wait_spans(capspans, _ended("rtc.reconnect"), timeout=15)
    (episode,) = spans.named("rtc.reconnect")
    assert episode.attributes["lk_probe.outcome"] == "recovered"
    after = episode.attributes["lk_probe.media.audio_resumed_after_s"]
    assert 0 <= after < 2.0, after
