"""Replay tests: record sequences → phases.

* ``transcribed-*.jsonl``: lines copied verbatim from the SDK's logs as users and our own notes recorded them
  (labelled ``"source": "transcribed"`` in each file's first line).
* ``real-*.jsonl``: captured by ``tests/rust/capture.py`` from a real ``livekit.rtc.Room`` (livekit 1.1.2, 1.1.21,
  1.2.0) against the server double with faults; ``real-*.live.json`` holds what the live machine emitted during the
  capture, and replaying must give exactly the same calls.
"""

from __future__ import annotations

import json

import pytest

from replay import DATA, calls_of, load, normalized, replay, tree

S = 1000.0  # ms


def phases(name):
    sink, m, meta = replay(name)
    return tree(sink), sink, m, meta


def by(rows, phase):
    return [r for r in rows if r[0] == phase]


def dur(r):
    return r[3] - r[2]


def events(sink, name=None):
    return [c for c in sink.calls if c.op == "event" and (name is None or c.name == name)]


# ------------------------------------------------------------------------------------------------ transcribed
def test_transcribed_files_are_labelled():
    files = sorted(DATA.glob("transcribed-*.jsonl"))
    assert len(files) >= 10
    for f in files:
        meta, _ = load(f.name)
        assert meta["source"] == "transcribed" and meta["livekit"] in ("1.1.2", "1.1.21", "1.2.0")


def test_seed000_112_v0_timeout_then_region_timeout():
    rows, sink, m, _ = phases("transcribed-1.1.2-cloud-v0-timeout-region-timeout.jsonl")
    att = by(rows, "rtc.attempt")
    assert [(a[5]["lk_probe.attempt"], a[4]) for a in att] == [(1, "timeout"), (2, None)]
    # 1.1.2 reports the region error; the attempt shows the cause, the reported type stays as an attribute
    assert att[0][5]["lk_probe.error.reported_type"] == "region_fetch_timeout"
    sig = by(rows, "rtc.signal")
    assert sig[0][4] == "timeout" and dur(sig[0]) == pytest.approx(5 * S)
    assert sig[0][5]["server.address"] == "p-3tqm7ro6kbs.livekit.cloud" and sig[0][5]["lk_probe.signal.path"] == "v0"
    val, reg = by(rows, "rtc.validate")[0], by(rows, "rtc.region_fetch")[0]
    assert val[1] == reg[1] == "rtc.attempt"
    assert (val[2], val[3]) == (pytest.approx(5001), pytest.approx(8002)) and val[5]["lk_probe.inferred"] is True
    assert reg[4] == "region_fetch_timeout" and dur(reg) == pytest.approx(3 * S) and reg[5]["lk_probe.inferred"]
    join = by(rows, "rtc.join")[0]
    assert join[5]["lk_probe.server.region"] == "us-east-2" and join[5]["lk_probe.server.version"] == "1.9.1"
    assert join[5]["lk_probe.server.protocol"] == 16 and join[5]["lk_probe.subscriber_primary"] is True
    assert by(rows, "rtc.pc")[0][5]["lk_probe.pc"] == "subscriber"
    cb = by(rows, "rtc.callback")[0]
    assert (cb[2], cb[3]) == (pytest.approx(11290), pytest.approx(11300))
    assert m.open_count() == 0


def test_121_v1_timeout_once_times_verbatim():
    rows, *_ = phases("transcribed-1.1.21-v1-timeout-once.jsonl")
    assert [r[0] for r in rows] == ["rtc.attempt", "rtc.signal", "rtc.validate", "rtc.attempt", "rtc.signal",
                                    "rtc.join", "rtc.pc", "rtc.callback"]
    sig = rows[1]
    assert sig[4] == "timeout" and dur(sig) == pytest.approx(5000)
    assert rows[2][5]["lk_probe.inferred_from"] == "signal connection failed" and dur(rows[2]) == pytest.approx(13)
    assert rows[0][4] == "timeout" and rows[3][4] is None


def test_121_v1_404_falls_back_to_v0():
    rows, sink, *_ = phases("transcribed-1.1.21-v1-404-fallback.jsonl")
    sig = by(rows, "rtc.signal")
    assert [(s[5]["lk_probe.signal.path"], s[4]) for s in sig] == [("v1", "http_404"), ("v0", None)]
    assert not by(rows, "rtc.validate")  # only a non-404 failure runs validate
    assert by(rows, "rtc.attempt")[0][4] is None
    # the v0 fallback success is not logged: its end is inferred from the JoinResponse
    assert sig[1][5]["lk_probe.inferred_from"] == "received JoinResponse"
    assert events(sink, "rtc.join_response")[0].attributes["lk_probe.server.region"] == "us-east-2"


def test_121_cloud_region_timeout_keeps_original_error():
    rows, *_ = phases("transcribed-1.1.21-cloud-region-timeout.jsonl")
    att = by(rows, "rtc.attempt")[0]
    assert att[4] == "timeout" and "lk_probe.error.reported_type" not in att[5]
    val, reg = by(rows, "rtc.validate")[0], by(rows, "rtc.region_fetch")[0]
    assert dur(reg) == pytest.approx(3000) and reg[4] == "region_fetch_timeout"
    assert dur(val) == pytest.approx(3002)


def test_121_leave_resume_episode():
    rows, sink, m, _ = phases("transcribed-1.1.21-leave-resume.jsonl")
    ep = by(rows, "rtc.reconnect")[0]
    # the reconnecting event arrived before the WARN line (order not guaranteed): the episode starts at the event
    assert ep[2] == pytest.approx(1107.8) and ep[3] == pytest.approx(4170) and ep[4] is None
    assert ep[5]["lk_probe.reconnect.source"] == "server request to leave"
    assert ep[5]["lk_probe.reconnect.action"] == "Resume" and ep[5]["lk_probe.outcome"] == "recovered"
    att = by(rows, "rtc.reconnect.attempt")
    assert [(a[1], a[5]["lk_probe.attempt"], a[5]["lk_probe.reconnect.mode"], a[4]) for a in att] == [
        ("rtc.reconnect", 1, "resume", None)]
    sig = by(rows, "rtc.signal")[-1]
    assert sig[1] == "rtc.reconnect.attempt" and sig[5]["lk_probe.inferred_from"] == "received reconnect response"
    leave = events(sink, "rtc.leave")[0]
    assert leave.attributes == {"lk_probe.leave.reason": "UnknownReason", "lk_probe.leave.action": "Resume",
                                "lk_probe.leave.can_reconnect": True}
    assert leave.key is not None  # held until the episode started, then attached to it


def test_112_seed004_migration_never_recovers():
    rows, sink, m, _ = phases("transcribed-1.1.2-seed004-migration.jsonl")
    ep = by(rows, "rtc.reconnect")[0]
    assert ep[5]["lk_probe.reconnect.reason"] == "Migration" and ep[3] is None  # kill -9: still open
    att = by(rows, "rtc.reconnect.attempt")[0]
    assert att[5]["lk_probe.attempt"] == 1 and att[5]["lk_probe.reconnect.mode"] == "resume"  # 'attempt: 0'
    wd = events(sink, "rtc.watchdog")[0]
    assert wd.attributes == {"lk_probe.watchdog.task": "signal_event", "lk_probe.watchdog.message_kind": "Answer"}
    assert wd.t - sink.calls[0].t == 21805 * 1_000_000
    assert [e.attributes["lk_probe.pc"] for e in events(sink, "rtc.pc_failed")] == ["subscriber", "publisher",
                                                                                  "subscriber"]
    assert events(sink, "rtc.data_retry_gap")[0].attributes["lk_probe.retry.first_seq"] == 1046
    assert events(sink, "rtc.session_close")[0].attributes["lk_probe.reconnect.source"] == "pc_state failed"
    assert m.open_count() == 2  # episode + attempt, for the recorder's stall records
    blob = json.dumps([c.__dict__ for c in sink.calls], default=str)
    assert "SECRETICEPWD" not in blob and "sid=PA_" not in blob


def test_112_gave_up_without_disconnected():
    rows, sink, m, _ = phases("transcribed-1.1.2-gave-up.jsonl")
    ep = by(rows, "rtc.reconnect")[0]
    assert ep[4] == "reconnect_failed" and ep[5]["lk_probe.outcome"] == "gave_up"
    att = by(rows, "rtc.reconnect.attempt")
    assert [a[5]["lk_probe.attempt"] for a in att] == list(range(1, 11))
    assert [a[5]["lk_probe.reconnect.mode"] for a in att] == ["resume"] + ["restart"] * 9
    assert all(a[4] == "refused" for a in att)
    assert len(by(rows, "rtc.reconnect.backoff")) == 10
    assert all(dur(b) <= 2.0 for b in by(rows, "rtc.reconnect.backoff"))  # the Burst bug: no real backoff
    assert ep[3] == pytest.approx(att[-1][3] + 1)  # closed on 'failed to reconnect', not at room close
    assert m.open_count() == 0


def test_121_refused_resume_escalates_to_restart():
    rows, sink, *_ = phases("transcribed-1.1.21-refuse-resume.jsonl")
    att = by(rows, "rtc.reconnect.attempt")
    assert [(a[5]["lk_probe.reconnect.mode"], a[4]) for a in att] == [("resume", "leave"), ("restart", None)]
    back = by(rows, "rtc.reconnect.backoff")[0]
    assert (back[2], back[3]) == (pytest.approx(5030), pytest.approx(5200))
    assert [r[0] for r in rows if r[1] == "rtc.reconnect.attempt"][-3:] == ["rtc.signal", "rtc.join", "rtc.pc"]
    assert events(sink, "rtc.participant_disconnected")[0].attributes["lk_probe.synthesized"] is True
    assert by(rows, "rtc.reconnect")[0][5]["lk_probe.outcome"] == "recovered"


def test_120_ice_never_four_pc_timeouts():
    rows, sink, m, _ = phases("transcribed-1.2.0-ice-never.jsonl")
    att = by(rows, "rtc.attempt")
    assert [(a[5]["lk_probe.attempt"], a[4]) for a in att] == [(i, "pc_timeout") for i in range(1, 5)]
    pcs = by(rows, "rtc.pc")
    assert len(pcs) == 4 and all(p[4] == "pc_timeout" and 14900 < dur(p) < 15100 for p in pcs)
    assert m.open_count() == 0


def test_120_join_timeout_then_setup_line():
    rows, sink, *_ = phases("transcribed-1.2.0-join-timeout-once.jsonl")
    join = by(rows, "rtc.join")
    assert join[0][4] == "join_timeout" and dur(join[0]) == pytest.approx(5001)
    assert events(sink, "rtc.connection_setup")[0].attributes["lk_probe.setup_ms"] == 71.0
    cb = by(rows, "rtc.callback")[0]
    assert (cb[2], cb[3]) == (pytest.approx(5111), pytest.approx(5130))


# ------------------------------------------------------------------------------------------------ real captures
REAL = sorted(p.name for p in DATA.glob("real-*.jsonl"))


def test_real_captures_exist_for_every_version():
    versions = {load(n)[0]["livekit"] for n in REAL}
    assert versions == {"1.1.2", "1.1.21", "1.2.0"}
    scenarios = {load(n)[0]["scenario"] for n in REAL}
    assert {"signal_timeout_once", "join_delay", "ice_never_once", "leave_resume", "refuse_resume",
            "cloud_region_timeout"} <= scenarios


@pytest.mark.parametrize("name", REAL)
def test_real_replay_equals_live(name):
    sink, m, meta = replay(name)
    assert meta["source"] == "captured"
    live = json.loads((DATA / name.replace(".jsonl", ".live.json")).read_text())
    # attribute refinements of open phases ("attributes" calls) and the JoinResponse's ping settings (with the
    # silence they date) were added after these captures; every start, end and event must be identical otherwise
    replayed = [c for c in calls_of(sink) if c["op"] != "attributes"]
    joins = [c for c in replayed if c["attributes"].get("lk_probe.signal.ping_timeout")]
    assert joins or not any("received JoinResponse" in r.get("message", "") for r in load(name)[1])
    for c in replayed:
        c["attributes"] = {k: v for k, v in c["attributes"].items() if k not in ADDED_AFTER_THE_CAPTURES}
    assert normalized(replayed) == normalized([c for c in live if c["op"] != "attributes"])


ADDED_AFTER_THE_CAPTURES = ("lk_probe.signal.ping_interval", "lk_probe.signal.ping_timeout",
                            "lk_probe.reconnect.silent_since")


def _check(name):
    rows, sink, m, meta = phases(name)
    assert m.open_count() == 0, "everything closes when the room is closed"
    return rows, sink, meta["scenario"], meta["livekit"]


@pytest.mark.parametrize("name", REAL)
def test_real_semantics(name):
    rows, sink, sc, ver = _check(name)
    check_real(rows, sink, sc, ver)


def check_real(rows, sink, sc, ver):
    """What a captured (or live) run of scenario ``sc`` on livekit ``ver`` must show."""
    att = by(rows, "rtc.attempt")
    sig = by(rows, "rtc.signal")
    assert att and att[-1][4] is None, "every captured connect finally succeeded"
    for r in rows:  # children inside their parents, durations from the record times
        assert r[3] is not None and r[3] >= r[2]
    # the successful attempt has its PC phase, also when the PC's records arrived after the connect callback
    pcs = [r for r in rows if r[0] == "rtc.pc" and r[1] == "rtc.attempt" and att[-1][2] <= r[2]]
    assert pcs and all(p[4] is None and p[3] <= att[-1][3] for p in pcs)
    if sc in ("ok", "leave_resume", "leave_reconnect", "refuse_resume", "signal_abort", "leave_disconnect"):
        assert len(att) == 1
    if sc == "signal_timeout_once":
        assert [a[4] for a in att] == ["timeout", None]
        # record times are arrival times: the 'connecting to' INFO of a first connect can arrive ~0.2 s late
        assert sig[0][4] == "timeout" and 4600 <= dur(sig[0]) <= 5600
        assert by(rows, "rtc.validate")[0][5]["lk_probe.inferred"] is True
    if sc == "http_503_once":
        assert att[0][4] == "http_5xx" and sig[0][4] == "http_5xx"
        if ver == "1.1.2":  # validate without a token: the double's 401 masks the 503
            assert att[0][5]["lk_probe.error.reported_type"] == "auth"
            assert by(rows, "rtc.validate")[0][4] == "auth"
    if sc == "v1_404":
        assert [(s[5]["lk_probe.signal.path"], s[4]) for s in sig[:2]] == [("v1", "http_404"), ("v0", None)]
    if sc == "join_delay":
        assert att[0][4] == "join_timeout"
        j = by(rows, "rtc.join")[0]
        assert j[4] == "join_timeout" and 4900 <= dur(j) <= 5600
    if sc == "ice_never_once":
        assert att[0][4] == "pc_timeout" and 14900 <= dur(att[0]) <= 16500
        if ver != "1.1.2":  # 1.1.2 logs no 'connection change' when ICE never starts checking
            assert by(rows, "rtc.pc")[0][4] == "pc_timeout"
    if sc == "cloud_region_timeout":
        assert att[0][4] == "timeout" and sig[0][5]["server.address"] == "lkp-test.livekit.cloud"
        reg = by(rows, "rtc.region_fetch")[0]
        assert reg[4] == "region_fetch_timeout" and dur(reg) == pytest.approx(3000) and reg[1] == "rtc.attempt"
        if ver == "1.1.2":
            assert att[0][5]["lk_probe.error.reported_type"] == "region_fetch_timeout"
    if sc == "cloud_region_fallback":
        assert len(att) == 1 and sig[0][4] == "timeout" and 4600 <= dur(sig[0]) <= 5600
        reg = by(rows, "rtc.region_fetch")
        assert len(reg) == 1 and reg[0][4] is None and reg[0][5]["lk_probe.inferred"] is True
        assert reg[0][2] == sig[0][3] and reg[0][3] <= sig[1][2]
        assert sig[1][4] is None and sig[1][5]["lk_probe.signal.region_fallback"] is True
        assert sig[1][5]["server.address"] == "lkp-test.livekit.cloud"
        assert "lk_probe.signal.region_fallback" not in sig[0][5]
    eps = by(rows, "rtc.reconnect")
    if sc == "give_up":
        ep = eps[0]
        assert len(eps) == 1 and ep[4] == "reconnect_failed" and ep[5]["lk_probe.outcome"] == "gave_up"
        att = by(rows, "rtc.reconnect.attempt")
        assert [a[5]["lk_probe.attempt"] for a in att] == list(range(1, 11))
        assert [a[5]["lk_probe.reconnect.mode"] for a in att] == ["resume"] + ["restart"] * 9
        assert all(a[4] for a in att)
        backoffs = [dur(b) for b in by(rows, "rtc.reconnect.backoff")]
        if ver == "1.1.2":  # fixed 5 s interval, and NO disconnected event: the episode ends on the E line
            assert sum(4500 < b < 5500 for b in backoffs) >= 8
            assert not events(sink, "rtc.disconnected")
        else:  # full-jitter exponential backoff capped at 7 s, then `disconnected`
            assert max(backoffs) <= 7100 and len(set(round(b, -2) for b in backoffs)) > 3
            assert events(sink, "rtc.disconnected")
        return
    if sc == "lose_node":
        assert len(eps) == 1 and eps[0][5]["lk_probe.outcome"] == "recovered"
        modes = [(a[5]["lk_probe.reconnect.mode"], a[4]) for a in by(rows, "rtc.reconnect.attempt")]
        assert modes[0][0] == "resume" and modes[0][1] is not None and modes[-1] == ("restart", None)
        assert eps[0][5]["lk_probe.reconnect.source"] == 'signal client closed: "stream closed"'
        return
    if sc == "leave_disconnect":  # no reconnect: an episode from the Leave to the `disconnected` event
        assert len(eps) == 1 and eps[0][5]["lk_probe.outcome"] == "disconnected" and eps[0][4] == "disconnected"
        assert eps[0][5]["lk_probe.reconnect.action"] == "Disconnect"
        assert not by(rows, "rtc.reconnect.attempt")
        assert events(sink, "rtc.leave")[0].key is not None  # the leave is on the episode
        assert events(sink, "rtc.leave")[0].attributes["lk_probe.leave.action"] == "Disconnect"
        assert events(sink, "rtc.disconnected")
        return
    if sc in ("leave_resume", "leave_reconnect", "refuse_resume", "signal_abort"):
        assert len(eps) == 1 and eps[0][5]["lk_probe.outcome"] == "recovered" and eps[0][4] is None
        modes = [(a[5]["lk_probe.reconnect.mode"], a[4]) for a in by(rows, "rtc.reconnect.attempt")]
        expect = {"leave_resume": [("resume", None)], "signal_abort": [("resume", None)],
                  "leave_reconnect": [("restart", None)]}.get(sc)
        if expect:
            assert modes == expect
        else:
            assert modes[0][0] == "resume" and modes[0][1] is not None and modes[-1] == ("restart", None)
            assert by(rows, "rtc.reconnect.backoff")
        src = eps[0][5]["lk_probe.reconnect.source"]
        assert src == ("signal client closed: \"stream closed\"" if sc == "signal_abort" else "server request to leave")
    else:
        assert not eps
    if sc == "leave_disconnect":
        assert events(sink, "rtc.leave")[0].attributes["lk_probe.leave.action"] == "Disconnect"
        assert events(sink, "rtc.disconnected")
