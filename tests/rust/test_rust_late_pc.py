"""The PC phase when its records arrive after the connect callback.

Record times are arrival times, and livekit's FFI hands its log to Python in batches: on livekit 1.1.21 / 1.2.0 the
'connection change, Connecting|Connected Publisher' records of a plain connect usually arrive after the connect call
returned (see ``real-ok-1.1.21.jsonl``). The PC phase is still placed inside the attempt, ending when the attempt
ended, marked inferred; without any PC record there is no PC phase.
"""

from __future__ import annotations

import time
import weakref

import pytest
from replay import load, replay_rows, tree

from lk_probe._recorder import Recorder
from lk_probe._rust.attempt import LATE_PC_WINDOW
from lk_probe._rust.machine import EngineMachine
from lk_probe._rust.records import parse

LATE = "real-ok-1.1.21.jsonl"


def _pc_record(r):
    return r["kind"] == "record" and r["message"].startswith("connection change, ")


def _rows(name=LATE):
    meta, rows = load(name)
    finished = next(r["t"] for r in rows if r["kind"] == "connect_finished")
    assert [r["t"] > finished for r in rows if _pc_record(r)] == [True, True], "the capture's PC records are late"
    return meta, rows, finished


def _phases(meta, rows):
    sink, m = replay_rows(meta, rows)
    rows_ = tree(sink, t0=rows[0]["t"])  # ms since the connect started
    return {p: [r for r in rows_ if r[0] == p] for p in ("rtc.attempt", "rtc.join", "rtc.pc", "rtc.callback")}, m


def test_late_pc_records_still_place_the_pc_inside_the_attempt():
    meta, rows, finished = _rows()
    ph, m = _phases(meta, rows)
    (att,), (join,), (pc,) = ph["rtc.attempt"], ph["rtc.join"], ph["rtc.pc"]
    assert pc[1] == "rtc.attempt" and pc[4] is None and pc[5]["lk_probe.pc"] == "publisher"
    assert pc[5]["lk_probe.inferred"] is True and pc[5]["lk_probe.inferred_from"] == "pc records after connect callback"
    # clamped: ends when the attempt ended (the connect callback), never before the join ended
    assert pc[3] == att[3] == pytest.approx((finished - rows[0]["t"]) / 1e6)
    assert join[3] <= pc[2] < pc[3]
    connecting, connected = (r["t"] for r in rows if _pc_record(r))
    assert pc[3] - pc[2] == pytest.approx((connected - connecting) / 1e6)  # the time between its records is kept
    assert not ph["rtc.callback"]  # nothing is known between the PC's clamped end and the callback
    assert m.open_count() == 0


def test_no_pc_record_no_pc_phase():
    meta, rows, _ = _rows()
    ph, _ = _phases(meta, [r for r in rows if not _pc_record(r)])
    assert ph["rtc.attempt"][0][4] is None and not ph["rtc.pc"]


def test_pc_records_long_after_the_callback_or_a_failing_pc_are_not_the_attempts():
    meta, rows, finished = _rows()
    shifted = [dict(r, t=r["t"] + LATE_PC_WINDOW + 1) if _pc_record(r) else r for r in rows]
    assert not _phases(meta, shifted)[0]["rtc.pc"]
    failed = [dict(r, message=r["message"].replace("Connected", "Failed")) if _pc_record(r) else r for r in rows]
    assert not _phases(meta, failed)[0]["rtc.pc"]


def test_a_new_connect_stops_waiting_for_the_previous_attempts_pc_records():
    meta, rows, finished = _rows()
    first_pc = next(i for i, r in enumerate(rows) if _pc_record(r))
    t = rows[first_pc]["t"]
    again = [{"kind": "connect_started", "t": t - 2, "url": "ws://127.0.0.1:1"},
             {"kind": "connect_finished", "t": t - 1, "error": "engine: signal failure: connection refused"}]
    ph, _ = _phases(meta, rows[:first_pc] + again + rows[first_pc:])
    assert [a[4] for a in ph["rtc.attempt"]] == [None, "refused"] and not ph["rtc.pc"]


def test_late_pc_records_of_a_recovered_reconnect_attempt():
    """The `reconnected` event outran the restart attempt's PC records: the PC phase is in that attempt too."""
    meta, rows = load("real-lose_node-1.1.21.jsonl")
    reconnecting = next(r["t"] for r in rows if r["kind"] == "room_event" and r["name"] == "reconnecting")
    recovered = next(r["t"] for r in rows if r["kind"] == "room_event" and r["t"] > reconnecting and (
        r["name"] == "reconnected" or r["name"] == "connection_state_changed" and r["data"].get("state") == 1))
    assert [r["t"] > recovered for r in rows if _pc_record(r)][-2:] == [True, True]
    sink, m = replay_rows(meta, rows)
    rows_ = tree(sink, t0=rows[0]["t"])
    att = [r for r in rows_ if r[0] == "rtc.reconnect.attempt"][-1]
    (pc,) = [r for r in rows_ if r[0] == "rtc.pc" and r[1] == "rtc.reconnect.attempt"]
    assert att[4] is None and pc[4] is None and att[2] < pc[2] < pc[3] == att[3]
    assert pc[3] == pytest.approx((recovered - rows[0]["t"]) / 1e6)
    assert pc[5]["lk_probe.inferred_from"] == "pc records after recovery"


def test_late_pc_nests_under_the_ended_attempt_span(capspans):
    """Through the production sink: the connect span and the attempt have ended and the recorder's default parent
    moved on (as the Room.connect patch does after a successful connect) when the PC records arrive."""
    meta, rows, finished = _rows()
    rec = Recorder(None)
    rec.start("rtc.connect", "rtc.connect", t=rows[0]["t"])
    rec.set_default_parent(rec.context("rtc.connect"))
    m = EngineMachine(rec, version=meta["livekit"])
    for r in rows:
        if r["kind"] == "record":
            m.record(parse(r["level"], r["target"], r["line"], r["module_path"], r["message"]), r["t"])
        elif r["kind"] == "connect_started":
            m.connect_started(r["t"], r["url"])
        elif r["kind"] == "connect_finished":
            m.connect_finished(r["t"], r["error"])
            rec.end("rtc.connect", t=r["t"])
            rec.set_default_parent(None)
    spans = capspans.spans
    connect, att, pc = spans.phase("rtc.connect"), spans.phase("rtc.attempt"), spans.phase("rtc.pc")
    assert att.parent_id == connect.span_id and pc.parent_id == att.span_id and pc.trace_id == att.trace_id
    assert pc.end_ns == att.end_ns == connect.end_ns == finished
    assert pc.attributes["lk_probe.inferred"] is True and not pc.error


def test_an_earlier_rooms_late_pc_records_are_not_the_new_attempts():
    """The records carry no room, and the previous room's last log batch can reach Python just after the next
    connect began: its 'Connecting/Connected Publisher' pair must not become a healthy PC phase of the new attempt
    (whose own PC never connects here). The engine creates an attempt's PCs after its JoinResponse and records keep
    their order, so PC records before the attempt's JoinResponse are not the attempt's."""
    meta, rows = load("real-ice_never_once-1.1.21.jsonl")
    start = next(i for i, r in enumerate(rows) if r["kind"] == "connect_started")
    template = next(r for r in rows if _pc_record(r))
    t = rows[start]["t"]
    stray = [dict(template, t=t + 30_000_000, message="connection change, Connecting Publisher"),
             dict(template, t=t + 37_000_000, message="connection change, Connected Publisher"),
             dict(template, t=t + 38_000_000, message="connection setup took 21.5ms")]
    sink, m = replay_rows(meta, rows[:start + 1] + stray + rows[start + 1:])
    rows_ = tree(sink, t0=t)
    a1 = next(r for r in rows_ if r[0] == "rtc.attempt")
    assert a1[4] == "pc_timeout"
    pcs = [r for r in rows_ if r[0] == "rtc.pc"]
    assert pcs and all(pc[2] > 35 for pc in pcs)  # none from the stray pair (t+30 ms … t+37 ms)
    assert pcs[0][1] == "rtc.attempt" and pcs[0][4] == "pc_timeout"  # attempt 1's own PC, which never connected
    assert not [r for r in rows_ if r[0] == "rtc.callback"]
    assert m.open_count() == 0


def test_pc_records_after_the_room_closed_still_reach_its_machine(monkeypatch):
    """A job that ends right after connecting closes its room before the log batch with the PC records arrives: with
    no live room left, the records still go to the closed room's machine while its attempt awaits them."""
    from lk_probe._patches import room as room_patch

    meta, rows, finished = _rows()
    shift = time.time_ns() - finished - 100_000_000  # the connect returned 100 ms ago
    rows = [dict(r, t=r["t"] + shift) for r in rows]
    sink, m = replay_rows(meta, [r for r in rows if not _pc_record(r) and r["kind"] != "closed"])
    m.closed(time.time_ns())

    class Room:
        pass

    room = Room()
    rt = room_patch.RoomTrace(None, m, None, None, None, closed=True)
    monkeypatch.setattr(room_patch, "_rooms", [(weakref.ref(room), rt)])
    monkeypatch.setattr(room_patch, "_ended", None)
    assert room_patch.active_machine() is m
    for r in rows:
        if _pc_record(r):
            room_patch.active_machine().record(parse(r["level"], r["target"], r["line"], r["module_path"],
                                                     r["message"]), time.time_ns())
    (pc,) = tree(sink, t0=rows[0]["t"])[-1:]
    assert pc[0] == "rtc.pc" and pc[1] == "rtc.attempt" and pc[4] is None
    assert pc[3] == pytest.approx((finished + shift - rows[0]["t"]) / 1e6)
    assert room_patch.active_machine() is None  # placed: nothing more awaited, later records go nowhere
    assert m.open_count() == 0
