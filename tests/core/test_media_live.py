"""Is the agent hearing the caller? The real livekit-agents worker and job process, the real Rust SDK, the double's
simulated caller sending a tone over real RTP, spans over real OTLP/HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.rtc, pytest.mark.lk_netns, pytest.mark.e2e]

MEDIA_AGENT = Path(__file__).parent / "agents" / "media_agent.py"


def _rtc_version() -> tuple[int, ...]:
    from livekit.rtc import __version__

    return tuple(int(x) for x in __version__.split(".")[:3])


STATS = _rtc_version() >= (1, 1, 21)  # first audio and silences are read from track stats (never on 1.1.2)


def _call(probe, room: str, *, start: bool = True, **env: str) -> str:
    """A caller in ``room``, then the agent dispatched there (the room's first word says what the agent does)."""
    if start:
        probe.start_worker(agent_name="media", agent=MEDIA_AGENT, **env)
    d = probe.double
    d.call(d.signal.add_caller, room, "caller", hz=440.0)
    return probe.dispatch(room=room, agent_name="media")


def test_a_normal_call_hears_the_caller_and_a_broken_session_says_so(probe):
    job_id = _call(probe, "listen-1")
    for name in ("media.subscribe", "session.start", *(("media.first_audio",) if STATS else ())):
        probe.wait_span(job_id, name, timeout=40)
    spans = probe.trace(job_id)
    marker = next(m for m in probe.markers("heard") if m["job_id"] == job_id)
    assert abs(marker["hz"] - 440.0) < 10 and marker["rms"] > 0.05, marker  # the entrypoint heard the tone

    wait, track_wait, sub, start = (spans.phase(n) for n in ("media.participant_wait", "media.track_wait",
                                                            "media.subscribe", "session.start"))
    d = probe.double
    caller = d.events.of_kind("caller_joined")[0]
    published = d.events.of_kind("caller_track_published")[0]
    assert wait.attributes["lk_probe.media.participant_sid"] == caller["sid"]
    assert sub.attributes["lk_probe.media.track_sid"] == published["track"] == marker["track"]
    assert sub.attributes["lk_probe.media.track_source"] == "microphone"
    assert not any(s.error for s in (wait, track_wait, sub, start))
    # the order a working call has: caller in the room → track subscribed → (first audio) → session started
    assert wait.end <= track_wait.end <= sub.end <= start.start
    sent = d.events.of_kind("caller_track_sent")[0]
    assert sub.end >= sent.t - 0.05  # subscribed once the double put the track into the agent's SDP
    if STATS:
        first = spans.phase("media.first_audio")
        rtp = d.events.of_kind("caller_rtp_started", lambda e: e["to"] == sent["to"])[0]
        assert not first.error and first.start >= sub.end - 1e-3 and first.end <= start.start
        assert rtp.t - 0.1 < first.end < rtp.t + 0.6, (first.end - rtp.t)
    else:
        assert not spans.named("media.first_audio")
    assert not spans.named("media.silence")

    # the same worker, a session whose STT plugin fails as it starts: the exception is on the session span
    job_id = _call(probe, "broken-2", start=False)
    probe.wait_span(job_id, "session.start", timeout=40)
    sub = probe.wait_span(job_id, "media.subscribe", timeout=10)
    assert any(m["job_id"] == job_id and m["error"] == "RuntimeError" for m in probe.markers("session_failed"))
    start = probe.trace(job_id).phase("session.start")
    assert start.error and start.attributes["error.type"] == "RuntimeError"
    assert "failed to initialise" in start.status_message
    assert not sub.error  # joined and subscribed, but the session never started
    finding = probe.wait_span(job_id, "finding", timeout=20)
    assert finding.attributes["lk_probe.finding.code"] == "session_start_failed"
    assert "never started listening" in finding.attributes["lk_probe.finding.summary"]


@pytest.mark.skipif(not STATS, reason="silences are read from track stats (never on livekit 1.1.2)")
def test_rtp_stops_for_5s_one_silence_exported_while_it_lasts(probe):
    probe.double.faults.add("caller_rtp_gap", identity="caller", after=1.0, gap=5.0)
    job_id = _call(probe, "hold-3", LKP_HOLD="9")
    d = probe.double
    stopped = d.events.wait_for_sync("caller_rtp_stopped", timeout=30)
    stall = probe.wait_span(job_id, "stall media.silence", timeout=10)
    assert not d.events.of_kind("caller_rtp_resumed"), "the silence must be in the receiver while it lasts"
    assert stall.attributes["lk_probe.stall.phase"] == "media.silence"
    resumed = d.events.wait_for_sync("caller_rtp_resumed", timeout=10)
    silence = probe.wait_span(job_id, "media.silence", timeout=10)
    assert silence.attributes["lk_probe.outcome"] == "resumed" and not silence.error
    gap = resumed.t - stopped.t
    assert abs(silence.duration - gap) < 0.5, (silence.duration, gap)
    assert len(probe.trace(job_id).named("media.silence")) == 1
