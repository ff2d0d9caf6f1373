"""Phases open when the job process is SIGKILLed reach the backend, with their own span ids,
marked incomplete, inside the job's trace — real worker, real Rust SDK, server double, real OTLP."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from lk_probe import _journal

pytestmark = pytest.mark.e2e


def _wait_journal(path: str, phase: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Path(path).exists():
            rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
            if any(r.get("op") == "s" and r.get("p") == phase for r in rows):
                return
        time.sleep(0.02)
    raise TimeoutError(f"{phase} never started in {path}")


def test_sigkill_during_a_hanging_signal_connect_exports_the_open_phases(probe):
    probe.double.faults.add("signal_upgrade_hang", count=None)  # the signal WebSocket upgrade never completes
    # LKP_IDLE=0: no replacement process is started while this one dies (multiprocessing can then lose the exit
    # status and report 255 — a livekit-agents/CPython race that lk_probe only papers over for jobs that finished)
    probe.start_worker(LKP_MODE="connect", LKP_IDLE="0")
    job_id = probe.dispatch(room="room-crash")
    probe.double.events.wait_for_sync("job_assigned", lambda e: e["job"] == job_id, timeout=15)
    deadline = time.monotonic() + 15
    while not probe.markers("entrypoint") and time.monotonic() < deadline:
        time.sleep(0.02)
    pid = probe.markers("entrypoint")[0]["pid"]
    path = _journal.path_for(job_id, pid)
    _wait_journal(path, "rtc.signal")

    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    sig = probe.wait_span(job_id, "rtc.signal", timeout=10, predicate=lambda s: s.attributes.get("lk_probe.incomplete"))
    root = probe.wait_span(job_id, "job", timeout=5)
    spans = probe.trace(job_id)

    assert sig.received_ns / 1e9 - killed < 2.0
    assert sig.status_code == "ERROR" and sig.attributes["error.type"] == "process_died"
    assert sig.attributes["lk_probe.signal.path"] in ("v0", "v1")
    assert abs(sig.end - killed) < 1.0
    # the tree up to the job span is whole: attempt → connect span (ours or agents' room_connect) → ... → job
    attempt = spans.parent(sig)
    assert attempt.name == "rtc.attempt" and attempt.attributes["lk_probe.incomplete"] is True
    chain, node = [], attempt
    while node is not None and node.span_id != root.span_id:
        chain.append(node.name)
        node = spans.parent(node)
    assert node is not None, f"broken parent chain: {chain}"
    assert {"job_entrypoint"} <= set(chain)
    assert root.attributes["lk_probe.incomplete_phases"] >= 3
    assert spans.phase("job.process").attributes["lk_probe.signal"] == 9
    assert not Path(path).exists()  # the worker removed the journal
    spans.assert_no_duplicates()


@pytest.mark.lk_netns
def test_sigkill_during_a_resume_episode_exports_the_episode_and_its_open_attempt(probe):
    probe.start_worker(LKP_MODE="connect_hold", LKP_HOLD="120", LKP_IDLE="0")
    job_id = probe.dispatch(room="room-resume-kill")
    deadline = time.monotonic() + 30
    while not probe.markers("connected") and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = probe.markers("connected")[0]["pid"]
    identity = probe.double.events.of_kind("job_assigned", lambda e: e["job"] == job_id)[0]["identity"]
    # the migration of the report: the server asks for a resume, and the resume's signal connect hangs (each attempt
    # stays open for the SDK's 5 s timeout, so the kill lands inside one)
    probe.double.faults.add("signal_upgrade_hang", identity=identity, count=None)
    probe.double.call(probe.double.signal.send_leave, identity, action="RESUME", reason="MIGRATION")
    path = _journal.path_for(job_id, pid)
    _wait_journal(path, "rtc.reconnect.attempt")

    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    ep = probe.wait_span(job_id, "rtc.reconnect", timeout=10)
    root = probe.wait_span(job_id, "job", timeout=5)
    spans = probe.trace(job_id)
    assert ep.received_ns / 1e9 - killed < 2.0
    assert ep.attributes["lk_probe.incomplete"] is True and ep.status_code == "ERROR"
    assert ep.attributes["lk_probe.reconnect.reason"].lower() == "migration"
    assert ep.parent_id == root.span_id  # the episode belongs to the job, not to the (finished) connect
    open_attempts = [s for s in spans.children(ep) if s.name == "rtc.reconnect.attempt"
                     and s.attributes.get("lk_probe.incomplete")]
    assert open_attempts, spans.summary()
    assert root.attributes["lk_probe.outcome"] == "killed"
    # report 004's verdict, from the worker (the job process died): the migration that never recovered, naming the
    # livekit version in use, then the kill; one WARNING line
    from livekit.rtc import __version__ as rtc_version

    assert root.attributes["lk_probe.finding.code"] == "migration_never_recovers", root.attributes
    assert f"livekit {rtc_version}" in root.attributes["lk_probe.finding.summary"]
    # LKP_IDLE=0: the job also had a cold process, the least of its troubles
    assert root.attributes["lk_probe.finding.codes"].split(",") == ["migration_never_recovers", "process_killed",
                                                                    "cold_process_start"]
    (line,) = probe.verdict_lines(job_id)
    assert "migration_never_recovers" in line and "also: process_killed, cold_process_start" in line


def test_exit_status_255_of_a_job_that_finished_is_not_a_failure(capspans, tmp_path, monkeypatch):
    """multiprocessing reports 255 when two threads poll a forkserver child; the journal's `done` tells the truth."""
    from types import SimpleNamespace

    from lk_probe._patches import worker

    monkeypatch.setenv("LK_PROBE_JOURNAL_DIR", str(tmp_path))
    job = SimpleNamespace(id="AJ_255", dispatch_id="", room=SimpleNamespace(sid="", name="", creation_time=0,
                          creation_time_ms=0), agent_name="", state=SimpleNamespace(started_at=1))
    outcomes = {}
    for done in (True, False):
        jt = worker._JobTrace(job, 0, None)
        jt.rec.start("job", "job")
        jt.rec.set_default_parent(jt.rec.context("job"))
        jt.rec.start("job.process", "job.process")
        path = _journal.path_for(job.id, 4242)
        j = _journal.Journal(path)
        if done:
            j.done()
        j.close()
        worker._on_process_end(jt, SimpleNamespace(exitcode=255, killed=False, pid=4242))
        proc = [s for s in capspans.spans.named("job.process")][-1]
        outcomes[done] = (proc.attributes["lk_probe.outcome"], proc.attributes.get("lk_probe.exit_status_lost"),
                          proc.status_code)
        assert not Path(path).exists()
    assert outcomes[True] == ("ok", True, "UNSET")
    assert outcomes[False] == ("failed", None, "ERROR")
