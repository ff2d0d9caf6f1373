"""One worker, eight jobs at once in their own job processes, some of them failing: each job's phases land in its own
trace and in no other."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.lk_netns]

# room -> what its job does: three connect (engine phases in the job process), two hold, two raise, one SIGKILLs
# itself; every job first holds its request handler for LKP_HOLD seconds, so the worker has all eight in hand at once.
# Eight idle processes: with none, the worker launches each job cold before it takes the next offer.
MODES = {"room-c0": "connect_hold", "room-c1": "connect_hold", "room-c2": "connect_hold", "room-h0": "hold",
         "room-h1": "hold", "room-r0": "raise", "room-r1": "raise", "room-k0": "kill"}
WORKER_PHASES = ("job.availability", "job.request_handler", "job.assignment", "job.launch", "job.process")


def test_eight_concurrent_jobs_with_faults_keep_their_phases_in_their_own_traces(probe):
    probe.start_worker(LKP_MODE_BY_ROOM=json.dumps(MODES), LKP_REQUEST="slow", LKP_HOLD="3", LKP_IDLE="8")
    jobs = {probe.dispatch(room=room): room for room in MODES}
    roots = {job: probe.wait_span(job, "job", timeout=180) for job in jobs}  # eight process starts on a busy machine
    procs = {job: probe.wait_span(job, "job.process", timeout=10) for job in jobs}
    for job, room in jobs.items():
        if MODES[room] == "connect_hold":
            probe.wait_span(job, "rtc.join", timeout=10)
    everything = probe.rx.spans()
    traces = {job: probe.trace(job) for job in jobs}

    # they ran at once: every request handler overlaps every other one in the worker
    handlers = [traces[job].phase("job.request_handler") for job in jobs]
    assert max(h.start for h in handlers) < min(h.end for h in handlers), [(h.start, h.end) for h in handlers]

    for job, room in jobs.items():
        spans, mode = traces[job], MODES[room]
        spans.assert_no_duplicates()
        for name in WORKER_PHASES:
            assert len(spans.named(name)) == 1, (job, name, spans.summary())
        # nothing from another job in this trace: each span naming a job names this one
        assert {s.attributes["lk.job_id"] for s in spans if "lk.job_id" in s.attributes} == {job}, spans.summary()
        assert roots[job].attributes["lk.pii.room_name"] == room
        # every span that names a process names this job's own
        assert {s.attributes["process.pid"] for s in spans if "process.pid" in s.attributes} == {
            procs[job].attributes["process.pid"]}, spans.summary()
        engine = spans.named("rtc.join")
        if mode == "connect_hold":
            assert len(engine) == 1 and len(spans.named("rtc.signal")) == 1, spans.summary()
        else:
            assert not engine and not spans.named("rtc.attempt"), (mode, spans.summary())
        outcome = roots[job].attributes["lk_probe.outcome"]
        if mode == "kill":
            assert outcome == "killed" and procs[job].attributes["error.type"] == "SIGKILL"
        else:
            assert procs[job].attributes["process.exit.code"] == 0, (mode, procs[job].attributes)

    assert len({p.attributes["process.pid"] for p in procs.values()}) == len(jobs)  # a process of its own each
    # and every span that names a job is in that job's trace
    for s in everything:
        job = s.attributes.get("lk.job_id")
        if job in jobs:
            assert s.trace_id == probe.trace_id(job), (s.name, job)
