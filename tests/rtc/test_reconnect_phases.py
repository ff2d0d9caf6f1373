"""Reconnect episodes from the real Rust SDK against the double's faults."""

from __future__ import annotations

import pytest

from lk_probe.findings import diagnose

from .conftest import codes, signal, wait_spans

pytestmark = [pytest.mark.rtc, pytest.mark.lk_netns, pytest.mark.e2e]


def _episode_done(spans):
    return [e for e in spans.named("rtc.reconnect") if e.end]


def _attempts(spans, episode):
    return sorted((s for s in spans.children(episode) if s.name == "rtc.reconnect.attempt"), key=lambda s: s.start)


@pytest.mark.smoke("reconnect")
async def test_leave_resume_is_an_episode_recovered_by_resume(lk_double, capspans, connected):
    room, events = await connected("agent-r")
    sid = room.local_participant.sid
    await signal(lk_double, "send_leave", "agent-r", action="RESUME", reason="MIGRATION")
    await events.wait("reconnected", timeout=30)
    spans = await wait_spans(capspans, _episode_done)
    ep = _episode_done(spans)[0]
    assert not ep.error and ep.attributes["lk_probe.outcome"] == "recovered"
    assert ep.attributes["lk_probe.reconnect.action"].lower() == "resume"
    assert ep.attributes["lk_probe.reconnect.reason"].lower() == "migration"
    (attempt,) = _attempts(spans, ep)
    assert attempt.attributes["lk_probe.reconnect.mode"] == "resume" and not attempt.error
    assert room.local_participant.sid == sid
    leave = lk_double.events.of_kind("leave_sent", lambda e: e["identity"] == "agent-r")[0]
    assert abs(ep.start - leave.t) < 0.5
    assert codes(spans) == []  # a resume that worked is no finding


async def test_refused_resume_then_full_reconnect(lk_double, capspans, connected):
    room, events = await connected("agent-s")
    lk_double.faults.add("refuse_resume", identity="agent-s", count=1)
    await signal(lk_double, "send_leave", "agent-s", action="RESUME")
    await events.wait("reconnected", timeout=30)
    spans = await wait_spans(capspans, _episode_done)
    ep = _episode_done(spans)[0]
    attempts = _attempts(spans, ep)
    assert [a.attributes["lk_probe.reconnect.mode"] for a in attempts] == ["resume", "restart"]
    assert attempts[0].error and not attempts[1].error
    assert ep.attributes["lk_probe.outcome"] == "recovered"
    assert codes(spans) == ["resume_refused"]


async def test_dropped_pongs_start_an_episode_caused_by_ping_timeout(lk_double, capspans, connected):
    lk_double.signal.ping_interval, lk_double.signal.ping_timeout = 1, 5  # 1.1.21 sends no ping while a resume settles
    room, events = await connected("agent-p")
    lk_double.faults.add("drop_pongs", identity="agent-p", count=1)
    await events.wait("reconnected", timeout=40)
    spans = await wait_spans(capspans, _episode_done)
    ep = _episode_done(spans)[0]
    assert "ping timeout" in ep.attributes["lk_probe.reconnect.source"]
    assert ep.attributes["lk_probe.outcome"] == "recovered"
    # when the link went silent: the join recorded the server's ping timeout, and the episode dates the silence one
    # ping timeout before the SDK noticed — the double's last pong on that connection, give or take a ping
    join = spans.phases("rtc.join")[0]
    assert (join.attributes["lk_probe.signal.ping_interval"], join.attributes["lk_probe.signal.ping_timeout"]) == (1, 5)
    since = ep.attributes["lk_probe.reconnect.silent_since"]
    assert since == ep.start_ns - 5_000_000_000 or ep.start_ns - since < 5_000_000_000  # episode opened by the event
    withheld = lk_double.events.of_kind("pongs_withheld", lambda e: e["identity"] == "agent-p")[0]
    assert withheld["last_pong"] is not None and abs(since / 1e9 - withheld["last_pong"]) < 1.5, \
        (since / 1e9, withheld["last_pong"])
    (finding, *_) = diagnose(spans)
    assert finding.code == "ping_timeout" and finding.span_id == ep.span_id
    t0 = spans[0].start_ns
    assert f"went silent at +{(since - t0) / 1e9:.1f} s (its last pong)" in finding.evidence, finding.evidence


async def test_leave_disconnect_ends_as_disconnected(lk_double, capspans, connected):
    room, events = await connected("agent-d")
    await signal(lk_double, "send_leave", "agent-d", action="DISCONNECT", reason="SERVER_SHUTDOWN")
    await events.wait("disconnected", timeout=30)
    spans = await wait_spans(capspans, _episode_done)
    ep = _episode_done(spans)[0]
    assert ep.attributes["lk_probe.outcome"] == "disconnected"
    assert ep.attributes["lk_probe.reconnect.reason"].lower().replace("_", "") == "servershutdown"
    assert ep.attributes["lk_probe.reconnect.action"].lower() == "disconnect"
    assert not _attempts(spans, ep)  # the engine does not try to reconnect
    assert codes(spans) == []  # the server ended the session on purpose


async def test_node_loss_is_a_resume_then_a_rejoin(lk_double, capspans, connected):
    room, events = await connected("agent-n")
    await signal(lk_double, "lose_node", "agent-n")
    await events.wait("reconnected", timeout=40)
    spans = await wait_spans(capspans, _episode_done)
    ep = _episode_done(spans)[0]
    modes = [a.attributes["lk_probe.reconnect.mode"] for a in _attempts(spans, ep)]
    assert modes[0] == "resume" and modes[-1] == "restart"
    assert ep.attributes["lk_probe.outcome"] == "recovered"
    assert codes(spans) == ["resume_refused"]


@pytest.mark.slow
async def test_a_resume_that_never_succeeds_is_an_error_episode_with_every_attempt(lk_double, capspans, connected):
    room, events = await connected("agent-x")
    lk_double.faults.add("refuse_resume", identity="agent-x", count=None)
    lk_double.faults.add("refuse_rejoin", identity="agent-x", count=None)
    await signal(lk_double, "send_leave", "agent-x", action="RESUME")
    spans = await wait_spans(capspans, _episode_done, timeout=120)
    ep = _episode_done(spans)[0]
    attempts = _attempts(spans, ep)
    assert ep.error and ep.attributes["lk_probe.outcome"] in ("gave_up", "failed")
    assert len(attempts) == 10 and all(a.error for a in attempts)
    # 1.1.2 logs 0-based attempts ("attempt: 0"), 1.1.21+ 1-based: lk_probe numbers them from 1 on every version
    assert [a.attributes["lk_probe.attempt"] for a in attempts] == list(range(1, 11))
    assert codes(spans)[0] == "reconnect_failed"
