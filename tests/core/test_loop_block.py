"""The Rust watchdog lines tied to livekit-agents' event_loop_blocked spans (agents 1.8+, real job process).

The real worker runs the job; livekit-agents' loop monitor measures a real 0.8 s block of the job's loop. Only the
Rust watchdog line itself is produced by the agent (through the exact logger call the FFI callback makes): the real
line needs a libwebrtc handler stuck for 10 s, which nothing here can provoke.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.lk_netns]


def _agents_has_loop_monitor() -> bool:
    try:
        from livekit.agents.telemetry import loop_monitor  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _agents_has_loop_monitor(), reason="this livekit-agents has no event_loop_blocked spans")
def test_watchdog_lines_and_the_blocked_loop_point_at_each_other(probe):
    probe.start_worker(LKP_MODE="loop_block")
    job_id = probe.dispatch(room="room-loop-block")
    probe.wait_span(job_id, "job", timeout=60)
    spans = probe.trace(job_id)
    (blocked,) = spans.named("event_loop_blocked")
    assert blocked.duration >= 0.7, blocked.duration  # the agent's real 0.8 s block, measured by livekit-agents
    watchdogs = [(s, e) for s in spans for e in s.events if e.name == "rtc.watchdog"]
    assert len(watchdogs) == 2, spans.summary()
    (carrier1, first), (carrier2, second) = sorted(watchdogs, key=lambda se: se[1].t_ns)
    assert first.attributes["lk_probe.watchdog.message_kind"] == "Answer"
    # connected, no phase open: each line is held by a zero-length `event` span under the job, never dropped
    assert carrier1.name == carrier2.name == "event" and carrier1.parent_id == spans.phase("job").span_id
    assert carrier1.attributes["lk_probe.event"] == "rtc.watchdog" and carrier1.duration == 0
    # the line that arrived during the block: the block's span, emitted afterwards, names it
    assert blocked.attributes["lk_probe.rust_watchdog.task"] == "signal_event"
    assert blocked.attributes["lk_probe.rust_watchdog.message_kind"] == "Answer"
    # the diagnosis names the blocked loop (the WARNING line is only for slow or failed joins, reconnects, deaths)
    from lk_probe.findings import diagnose

    assert [f.code for f in diagnose(spans)] == ["loop_blocked_rust_watchdog"]
    assert blocked.attributes["lk_probe.rust_watchdog.span_id"] == carrier1.span_id
    assert blocked.attributes["lk_probe.rust_watchdog.count"] == 1  # the later line had not happened yet
    assert "lk_probe.loop_blocked.span_id" not in first.attributes  # no block had been reported when it came
    # the line that came after the block was reported names the block (its 10 s window covers it)
    assert second.attributes["lk_probe.loop_blocked.span_id"] == blocked.span_id
    assert 0.7 <= second.attributes["lk_probe.loop_blocked.duration_s"] <= blocked.duration + 0.01
    assert blocked.start <= first.t_ns / 1e9 <= blocked.end
