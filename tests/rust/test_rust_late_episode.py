"""A reconnect episode whose records reach Python after the `reconnected` event that ends it.

livekit's FFI hands its log over in batches (about once a second) while room events come at once: on a busy machine
the whole batch of a recovery (session close, 'resuming connection... attempt', the signal and join records,
'RtcEngine successfully recovered') can arrive after the `reconnected` event. The episode still gets its cause and
its attempts, placed within its own time (the record times are arrival times), instead of ending with no attempt and
a second, inferred episode opening for the late records.
"""

from __future__ import annotations

import pytest
from replay import load, replay_rows, tree

BATCH_DELAY = 400_000_000  # the batch arrives 0.4 s after the `reconnected` event


def _late_batch(name):
    """The capture with every record between the first `reconnecting` and the last recovered event moved after it,
    as one batch; returns (meta, rows, episode start, recovered event time)."""
    meta, rows = load(name)

    def ev(r, *names):
        return r["kind"] == "room_event" and (r["name"] in names or r["name"] == "connection_state_changed" and (
            {"reconnecting": 2, "reconnected": 1}.get(names[0]) == r["data"].get("state")))

    i0 = next(i for i, r in enumerate(rows) if ev(r, "reconnecting"))
    i1 = max(i for i, r in enumerate(rows) if ev(r, "reconnected"))
    recovered = next(r["t"] for r in rows[i0:] if ev(r, "reconnected"))  # the first event says it
    held = [r for r in rows[i0:i1] if r["kind"] == "record"]
    batch = [dict(r, t=rows[i1]["t"] + BATCH_DELAY + k * 10_000) for k, r in enumerate(held)]
    rest = [r for r in rows[i0:i1 + 1] if r["kind"] != "record"]
    return meta, rows[:i0] + rest + batch + rows[i1 + 1:], rows[i0]["t"], recovered


def _episode(meta, rows, t0):
    sink, m = replay_rows(meta, rows)
    got = tree(sink, t0=t0)
    assert m.open_count() == 0
    episodes = [r for r in got if r[0] == "rtc.reconnect"]
    assert len(episodes) == 1, episodes  # not a second, inferred episode for the late records
    return episodes[0], [r for r in got if r[0] == "rtc.reconnect.attempt"], got


@pytest.mark.parametrize("name", ["real-leave_resume-1.1.2.jsonl", "real-leave_resume-1.1.21.jsonl"])
def test_a_resume_whose_records_come_after_the_reconnected_event(name):
    meta, rows, start, recovered = _late_batch(name)
    ep, attempts, _ = _episode(meta, rows, start)
    end = (recovered - start) / 1e6
    assert ep[2] <= 0 and ep[3] == pytest.approx(end) and ep[4] is None  # from the first record or event of it
    assert ep[5]["lk_probe.outcome"] == "recovered"
    assert ep[5]["lk_probe.reconnect.action"].lower() == "resume"  # the late session close still gives the cause
    (a,) = attempts
    assert a[5]["lk_probe.reconnect.mode"] == "resume" and a[4] is None and a[5]["lk_probe.attempt"] == 1
    assert a[5]["lk_probe.inferred"] is True
    assert (a[2], a[3]) == (ep[2], pytest.approx(end))  # began with the episode, ended when it recovered


@pytest.mark.parametrize("name", ["real-lose_node-1.1.2.jsonl", "real-lose_node-1.1.21.jsonl"])
def test_a_resume_then_a_restart_whose_records_come_after_the_reconnected_event(name):
    meta, rows, start, recovered = _late_batch(name)
    ep, attempts, got = _episode(meta, rows, start)
    end = (recovered - start) / 1e6
    assert ep[5]["lk_probe.outcome"] == "recovered" and ep[4] is None
    assert [a[5]["lk_probe.reconnect.mode"] for a in attempts] == ["resume", "restart"]
    assert attempts[0][4] is not None and attempts[1][4] is None
    for r in got:  # everything placed from the late batch stays within the episode
        if r[2] >= ep[2]:
            assert ep[2] <= r[2] <= (r[3] if r[3] is not None else end) <= end + 1e-6, r


def test_the_episode_ends_at_the_event_when_its_records_never_come():
    meta, rows, start, recovered = _late_batch("real-leave_resume-1.1.2.jsonl")
    cut = max(i for i, r in enumerate(rows) if r["kind"] == "room_event" and r["t"] <= recovered + 1_000_000)
    # the batch never comes; the next input is an event long after the window
    rows = rows[:cut + 1] + [{"kind": "room_event", "name": "moved", "t": recovered + 4_000_000_000, "data": {}}]
    sink, m = replay_rows(meta, rows)
    (ep,) = [r for r in tree(sink, t0=start) if r[0] == "rtc.reconnect"]
    assert ep[3] == pytest.approx((recovered - start) / 1e6) and ep[5]["lk_probe.outcome"] == "recovered"


def test_the_rooms_initial_connected_state_delivered_late_does_not_end_an_episode():
    """livekit 1.1.2 can deliver the room's initial 'connected' state change after the connect returned; when a
    Leave follows at once, it comes after the session close that began the episode, before its `reconnecting` event.
    It is not the episode's recovery: the episode keeps its attempt and ends at the real `reconnected`."""
    meta, rows = load("real-leave_resume-1.1.2.jsonl")
    i = next(i for i, r in enumerate(rows) if r["kind"] == "record" and "session close" in r["message"])
    stale = {"kind": "room_event", "name": "connection_state_changed", "t": rows[i]["t"] + 1000,
             "data": {"room_handle": 3, "state": 1}}
    reconnecting = [r for r in rows if r["kind"] == "room_event" and r["t"] < rows[i]["t"] and (
        r["name"] == "reconnecting" or r["data"].get("state") == 2)]
    assert reconnecting  # in this capture the events came first; here they come after the stale one
    body = [r for r in rows if r not in reconnecting]
    j = body.index(rows[i]) + 1
    moved = [dict(r, t=stale["t"] + 1000 + k) for k, r in enumerate(reconnecting)]
    ep, attempts, _ = _episode(meta, body[:j] + [stale] + moved + body[j:], rows[0]["t"])
    recovered = max(r["t"] for r in rows if r["kind"] == "room_event" and r["name"] == "reconnected")
    assert ep[5]["lk_probe.outcome"] == "recovered" and ep[3] > (stale["t"] - rows[0]["t"]) / 1e6
    assert ep[3] <= (recovered - rows[0]["t"]) / 1e6
    assert [a[5]["lk_probe.reconnect.mode"] for a in attempts] == ["resume"] and attempts[0][4] is None


def test_the_episode_ends_after_the_window_when_nothing_more_comes_at_all():
    # a quiet room: after the `reconnected` event no record and no event arrives; the window's end alone ends the
    # episode (waited for in real time), so a reconnect that recovered never becomes a stall record
    import time

    meta, rows, start, recovered = _late_batch("real-leave_resume-1.1.2.jsonl")
    cut = max(i for i, r in enumerate(rows) if r["kind"] == "room_event" and r["t"] <= recovered + 1_000_000)
    sink, m = replay_rows(meta, rows[:cut + 1])
    assert any(r[0] == "rtc.reconnect" and r[3] is None for r in tree(sink, t0=start))  # still open, awaiting
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and m.open_count():
        time.sleep(0.05)
    (ep,) = [r for r in tree(sink, t0=start) if r[0] == "rtc.reconnect"]
    assert ep[3] == pytest.approx((recovered - start) / 1e6) and ep[5]["lk_probe.outcome"] == "recovered"
