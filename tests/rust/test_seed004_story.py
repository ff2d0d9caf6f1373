"""A user's report of a migration that never recovered (livekit 1.1.2 records, transcribed from it) replayed through
the production path — EngineMachine → Recorder (OTel spans) with the crash journal on — and then the process death as
the worker handles it: a failed episode with the subscriber PC failure, the watchdog event on the Answer, the
attempts, and the job process killed by -9."""

from __future__ import annotations

from opentelemetry import trace
from replay import load

from lk_probe import _journal, _provider
from lk_probe._patches.job import attach_processors
from lk_probe._ids import job_parent_context
from lk_probe._recorder import Recorder
from lk_probe._rust.machine import EngineMachine
from lk_probe._rust.records import parse


def test_seed004_migration_resume_never_recovers_then_kill_9(capspans, tmp_path):
    meta, rows = load("transcribed-1.1.2-seed004-migration.jsonl")
    job_ctx = job_parent_context("AJ_m4tsujv4U4Fs", 1)
    path = str(tmp_path / "AJ_m4tsujv4U4Fs.1.jsonl")
    attach_processors(capspans.provider)
    _journal.active = _journal.Journal(path)  # the journal of this job, at the path the test chose
    try:
        rec = Recorder(job_ctx, attributes={"lk.job_id": "AJ_m4tsujv4U4Fs"}, label="AJ_m4tsujv4U4Fs")
        m = EngineMachine(rec, version=meta["livekit"])
        m.state = "connected"  # the call had been up for 34 s when the migration began
        for r in rows:
            if r["kind"] == "record":
                m.record(parse(r["level"], r["target"], r["line"], r["module_path"], r["message"]), r["t"])
            elif r["kind"] == "room_event":
                m.room_event(r["name"], r["t"], **r["data"])
        assert not capspans.spans.named("rtc.reconnect")  # still open when the process is killed
        t_death = rows[-1]["t"] + 10_000_000_000
    finally:
        _journal.end_job(done=False)

    # the worker sees the process exit with -9 and exports what the journal says was open
    assert _journal.export_open(path, _provider.tracer(), t_death=t_death, cause="SIGKILL") == 2
    spans = capspans.spans
    ep = spans.phase("rtc.reconnect")
    (att,) = spans.phases("rtc.reconnect.attempt")
    root = trace.get_current_span(job_ctx).get_span_context()
    assert ep.parent_id == format(root.span_id, "016x") and ep.trace_id == format(root.trace_id, "032x")
    assert att.parent_id == ep.span_id
    assert ep.error and ep.attributes["error.type"] == "process_died" and ep.attributes["lk_probe.incomplete"]
    assert "SIGKILL" in ep.status_message
    assert ep.attributes["lk_probe.reconnect.reason"] == "Migration"
    assert att.attributes["lk_probe.reconnect.mode"] == "resume" and att.attributes["lk_probe.attempt"] == 1
    names = [e.name for e in ep.events + att.events]
    watchdog = [e for e in ep.events + att.events if e.name == "rtc.watchdog"]
    assert watchdog and watchdog[0].attributes["lk_probe.watchdog.message_kind"] == "Answer"
    assert [e.attributes["lk_probe.pc"] for e in ep.events + att.events if e.name == "rtc.pc_failed"][:1] == \
        ["subscriber"]
    assert "rtc.data_retry_gap" in names
    assert ep.end_ns == t_death
