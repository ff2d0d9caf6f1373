"""One trace per job across the real worker and the real job process, the outcome of
jobs that never run, process death, and guards — real livekit-agents worker + server double + real OTLP/HTTP."""

from __future__ import annotations

import time

import pytest

from lk_probe._ids import dispatch_trace_id_for, root_span_id_for, trace_id_for
from lk_probe.findings import diagnose

pytestmark = pytest.mark.e2e

WORKER_PHASES = ("job.availability", "job.request_handler", "job.assignment", "job.launch", "job.process")


@pytest.mark.smoke("job")
def test_one_trace_per_job_across_worker_and_job_process(probe):
    probe.start_worker()
    job_id = probe.dispatch(room="room-a")
    root = probe.wait_span(job_id, "job", timeout=30)
    entry = probe.wait_span(job_id, "job_entrypoint", timeout=10)  # livekit-agents' own span, from the job process
    spans = probe.trace(job_id)

    # one trace, ids derived from the dispatch id (the job's span id from the job id); no duplicate spans
    offered = probe.double.events.of_kind("job_offered", lambda e: e["job"] == job_id)[0]
    assert root.trace_id == format(dispatch_trace_id_for(offered["dispatch"]), "032x")
    assert root.trace_id == format(trace_id_for(job_id, offered["dispatch"]), "032x") != format(trace_id_for(job_id),
                                                                                                  "032x")
    assert root.parent_id is None
    assert root.span_id == format(root_span_id_for(job_id, root.attributes["lk_probe.job.server_sent_at"]), "016x")
    spans.assert_no_duplicates()

    # parentage: worker phases and the job process's spans (agents' job_entrypoint included) hang off the job span
    for name in (*WORKER_PHASES, "process.prewarm"):
        assert spans.phase(name).parent_id == root.span_id, name
    assert spans.phase("job.handoff").parent_id == spans.phase("job.launch").span_id
    assert entry.parent_id == root.span_id
    assert entry.resource.get("service.name") == "probe-agent"

    # attributes from the real job
    a = root.attributes
    assert a["lk.job_id"] == job_id
    assert a["lk.dispatch_id"] == offered["dispatch"]
    assert a["lk.room_sid"] == offered["room_sid"]
    assert a["lk.pii.room_name"] == "room-a"
    assert a["lk.agent_name"] == "probe"
    assert a["lk.job.worker_id"] == offered["worker"]
    assert a["lk_probe.job.resuming"] is False
    proc = spans.phase("job.process")
    assert a["lk_probe.outcome"] == "ok" and root.status_code != "ERROR", (proc.attributes, probe.worker_log()[-3000:])
    assert spans.phase("job.launch").attributes["lk_probe.warm"] is True  # num_idle_processes=1: a warm process
    assert spans.phase("job.process").attributes["process.exit.code"] == 0

    # order and durations agree with the double's event log
    spans.assert_order(*WORKER_PHASES)
    ev = {k: probe.double.events.of_kind(k, lambda e: e.get("job") == job_id)[0]
          for k in ("job_offered", "job_availability", "job_assigned")}
    assert -0.05 < root.start - ev["job_offered"].t < 0.5  # received as the double sent it (event logged after send)
    asg = spans.phase("job.assignment")
    double_view = ev["job_assigned"].t - ev["job_availability"].t
    assert abs(asg.duration - double_view) < 0.1, (asg.duration, double_view)
    assert asg.start <= ev["job_availability"].t + 0.05
    assert asg.end >= ev["job_assigned"].t - 0.05
    assert root.start <= entry.start and entry.end <= root.end


def test_rejected_job_leaves_a_complete_worker_trace(probe):
    probe.start_worker(LKP_REQUEST="reject")
    job_id = probe.dispatch(room="room-reject")
    root = probe.wait_span(job_id, "job", timeout=20)
    spans = probe.trace(job_id)
    assert root.attributes["lk_probe.outcome"] == "rejected"
    assert spans.phase("job.request_handler").attributes["lk_probe.outcome"] == "rejected"
    av = spans.phase("job.availability")
    assert av.attributes["lk_probe.available"] is False
    assert not spans.named("job.assignment") and not spans.named("job.launch")
    assert probe.double.events.of_kind("job_availability", lambda e: e["job"] == job_id and not e["available"])


def test_assignment_that_never_comes_times_out_in_the_trace(probe):
    probe.double.faults.add("assignment_never", count=None)
    probe.start_worker()
    job_id = probe.dispatch(room="room-noassign")
    root = probe.wait_span(job_id, "job", timeout=30)
    asg = probe.trace(job_id).phase("job.assignment")
    assert root.status_code == "ERROR" and root.attributes["error.type"] == "assignment_timeout"
    assert asg.status_code == "ERROR" and asg.attributes["error.type"] == "assignment_timeout"
    assert 7.3 < asg.duration < 9.0, asg.duration  # livekit-agents' ASSIGNMENT_TIMEOUT is 7.5 s
    assert root.attributes["lk_probe.finding.code"] == "assignment_timeout"
    assert len(probe.verdict_lines(job_id)) == 1
    assert not probe.double.events.of_kind("job_assigned", lambda e: e["job"] == job_id)


def test_full_worker_auto_rejects_with_its_load_in_the_trace(probe):
    import livekit.agents

    if tuple(int(x) for x in livekit.agents.__version__.split(".")[:3]) < (1, 4, 2):
        pytest.skip("the load gate in _answer_availability exists from livekit-agents 1.4.2")
    # load 0.9 ≥ threshold 0.5: the worker's own gate answers available=False without a JobRequest
    probe.start_worker(LKP_LOAD="0.9", LKP_LOAD_THRESHOLD="0.5")
    job_id = probe.dispatch(room="room-full")
    root = probe.wait_span(job_id, "job", timeout=20)
    spans = probe.trace(job_id)
    assert root.attributes["lk_probe.outcome"] == "rejected_unavailable"
    assert spans.phase("job.availability").attributes["lk_probe.available"] is False
    assert not spans.named("job.request_handler")  # the user's handler never ran
    assert root.attributes["lk_probe.worker.load_threshold"] == pytest.approx(0.5)
    assert probe.markers("request") == []
    # the diagnosis of the exported trace: the worker was full, said on the job span with its load and outcome
    (finding,) = diagnose(spans)
    assert finding.code == "worker_full" and finding.span_id == root.span_id and "load threshold" in finding.summary
    assert finding.evidence.startswith("worker load 0.9 vs threshold 0.5") and "rejected_unavailable" in finding.evidence


def test_slow_request_handler_and_slow_prewarm_are_diagnosed_from_the_trace(probe, monkeypatch):
    # the request handler answers after 0.8 s (budget 0.5 s); the prewarm sleeps 1.5 s against a budget lowered to 1 s
    # (in the worker and here, where the exported trace is diagnosed)
    monkeypatch.setenv("LK_PROBE_BUDGET_PROCESS_PREWARM", "1.0")
    probe.start_worker(LKP_REQUEST="slow", LKP_HOLD="0.8", LKP_PREWARM="1.5", LK_PROBE_BUDGET_PROCESS_PREWARM="1.0")
    job_id = probe.dispatch(room="room-slow-start")
    probe.wait_span(job_id, "job", timeout=30)
    spans = probe.trace(job_id)
    handler, prewarm = spans.phase("job.request_handler"), spans.phase("process.prewarm")
    assert 0.8 <= handler.duration < 2.0 and prewarm.duration >= 1.5, (handler.duration, prewarm.duration)

    found = {f.code: f for f in diagnose(spans)}
    assert set(found) == {"slow_request_handler", "slow_prewarm"}, found  # warm process, quick connect: nothing else
    slow_handler, slow_prewarm = found["slow_request_handler"], found["slow_prewarm"]
    assert slow_handler.span_id == handler.span_id and "request handler (on_request)" in slow_handler.summary
    assert slow_handler.evidence == f"the request handler ran {handler.duration:.1f} s (budget 0.5 s) before it " \
                                    f"answered (accepted)"
    assert slow_prewarm.span_id == prewarm.span_id and "prewarm" in slow_prewarm.summary
    assert slow_prewarm.evidence == f"the job process's start and prewarm took {prewarm.duration:.1f} s (budget 1.0 s)"


@pytest.mark.smoke("sigkill")
def test_sigkilled_job_process_is_closed_by_the_worker_within_2s(probe):
    probe.start_worker(LKP_MODE="kill", LKP_IDLE="0")  # no idle refill racing the exit status (see test_crash)
    job_id = probe.dispatch(room="room-kill")
    proc = probe.wait_span(job_id, "job.process", timeout=30)
    root = probe.wait_span(job_id, "job", timeout=5)
    killed_at = probe.markers("killing")[0]["t"]
    assert proc.status_code == "ERROR" and proc.attributes["error.type"] == "SIGKILL", proc.attributes
    assert proc.attributes["lk_probe.signal"] == 9 and proc.attributes["process.exit.code"] == -9
    assert root.status_code == "ERROR" and root.attributes["lk_probe.outcome"] == "killed"
    assert root.received_ns / 1e9 - killed_at < 2.0
    assert proc.end - killed_at < 1.0
    # the worker's verdict: on the root, under job.process, and one WARNING line
    assert root.attributes["lk_probe.finding.code"] == "process_killed"
    assert "SIGKILL" in root.attributes["lk_probe.finding.evidence"]
    probe.wait_span(job_id, "finding", timeout=5, predicate=lambda s: s.parent_id == proc.span_id)
    (line,) = probe.verdict_lines(job_id)
    assert "WARNING" in line and "process_killed" in line and "room-kill" in line


def test_install_three_times_gives_no_duplicate_spans(probe):
    probe.start_worker(LKP_INSTALL_TIMES="3")
    job_id = probe.dispatch(room="room-triple")
    probe.wait_span(job_id, "job", timeout=30)
    probe.wait_span(job_id, "job_entrypoint", timeout=10)
    time.sleep(0.3)  # let any duplicate export that would follow arrive (there must be none)
    spans = probe.trace(job_id)
    spans.assert_no_duplicates()
    for name in ("job", *WORKER_PHASES, "job.handoff", "process.prewarm", "job_entrypoint"):
        assert len(spans.named(name)) == 1, name


@pytest.mark.parametrize("mode", ["return", pytest.param("connect", marks=pytest.mark.lk_netns)])
def test_faults_inside_every_hook_never_reach_the_agent(probe, mode):
    # every guarded block raises at its end and every guarded function at its start, in both processes
    probe.start_worker(LK_PROBE_INJECT_FAULTS="1", LK_PROBE_STRICT="0", LKP_MODE=mode)
    job_id = probe.dispatch(room="room-faults")
    probe.double.events.wait_for_sync("job_status", lambda e: e.get("job") == job_id and e.get("status") ==
                                      "JS_SUCCESS", timeout=60)
    assert [m["job_id"] for m in probe.markers("entrypoint")] == [job_id]
    if mode == "connect":
        assert [m["job_id"] for m in probe.markers("connected")] == [job_id]  # the job still connects
    log = probe.worker_log()
    assert log.count("lk_probe internal error") >= 5  # the injected faults did hit the hooks, in both processes ...
    for failure in ("unhandled exception while running the job task", "job_request_fnc failed",
                    "process exited with non-zero exit code", "failed to launch job"):
        assert failure not in log  # ... and none reached livekit-agents


@pytest.mark.lk_netns
def test_ctx_connect_phases_nest_in_the_job_trace(probe):
    import livekit.agents

    probe.start_worker(LKP_MODE="connect_hold", LKP_HOLD="0.5")  # the job lives on after connecting, as real ones do
    job_id = probe.dispatch(room="room-connect")
    probe.wait_span(job_id, "job", timeout=60)
    spans = probe.trace(job_id)
    root = spans.phase("job")
    entry = spans.phase("job_entrypoint")
    agents_has_room_connect = tuple(int(x) for x in livekit.agents.__version__.split(".")[:3]) >= (1, 8, 2)
    connect = spans.phase("room_connect" if agents_has_room_connect else "job.connect")
    assert not spans.named("rtc.connect")  # never a second connect span inside a job
    assert connect.parent_id == entry.span_id and entry.parent_id == root.span_id
    attempt = spans.phase("rtc.attempt")
    assert attempt.parent_id == connect.span_id and not attempt.error
    spans.assert_parent("rtc.signal", "rtc.attempt")
    assert all(s.attributes.get("lk.job_id") == job_id for s in spans if s.name.startswith("rtc."))
    assert connect.start <= attempt.start and attempt.end <= connect.end + 0.05
    connected = probe.markers("connected")[0]
    assert connected["sid"].startswith("PA_")
    # the selected ICE pair, read after the connect returned, is on the job's connect span (agents' or ours)
    ice = {k: v for k, v in connect.attributes.items() if k.startswith("lk_probe.ice.")}
    pc = "publisher" if "lk_probe.ice.publisher.protocol" in ice else "subscriber"
    assert ice[f"lk_probe.ice.{pc}.protocol"] == "udp" and ice[f"lk_probe.ice.{pc}.relayed"] is False, ice
    assert ice[f"lk_probe.ice.{pc}.local_candidate_type"] == "host", ice
    # a healthy job: no finding on the root, no diagnosis line
    assert "lk_probe.finding.code" not in root.attributes and not spans.named("finding")
    assert probe.verdict_lines(job_id) == []


def test_job_process_is_traced_even_when_it_never_calls_install(probe):
    # install() runs only in the worker (under __main__); lk_probe reaches the job process through the pickled
    # initialize_process_fnc, so prewarm and the job's trace context are there all the same
    probe.start_worker(LKP_INSTALL_IN_MAIN="1")
    job_id = probe.dispatch(room="room-main-only")
    root = probe.wait_span(job_id, "job", timeout=30)
    entry = probe.wait_span(job_id, "job_entrypoint", timeout=10)
    pre = probe.wait_span(job_id, "process.prewarm", timeout=10)
    assert entry.parent_id == root.span_id and pre.parent_id == root.span_id
    assert pre.attributes["process.pid"] == probe.markers("entrypoint")[0]["pid"]


@pytest.mark.lk_netns
def test_thread_executor_job_is_one_whole_trace(probe):
    # JobExecutorType.THREAD: the job runs in a thread of the worker process; the worker-side phases, the job side
    # and the job's end (the thread joined) are one trace all the same
    probe.start_worker(LKP_EXECUTOR="thread", LKP_MODE="connect", LKP_IDLE="0")
    job_id = probe.dispatch(room="room-thread")
    root = probe.wait_span(job_id, "job", timeout=60)
    spans = probe.trace(job_id)
    proc = spans.phase("job.process")
    entry = spans.phase("job_entrypoint")
    assert proc.attributes["lk_probe.executor"] == "thread" and "process.pid" not in proc.attributes
    assert not proc.error and root.attributes["lk_probe.outcome"] == "ok", root.attributes
    assert entry.parent_id == root.span_id and entry.end <= proc.end + 0.05  # the thread may start first
    assert spans.phase("rtc.attempt").attributes["lk.job_id"] == job_id
    marker = probe.markers("entrypoint")[0]
    assert marker["pid"] == probe.worker.proc.pid  # it really ran inside the worker process


@pytest.mark.lk_netns
def test_a_user_provider_that_livekit_agents_shuts_down_loses_no_span(probe):
    # the agent sets its own global SDK provider and hands it to livekit-agents (set_tracer_provider): lk_probe
    # records into it, and livekit-agents 1.3–1.7 shut it down at job end (later versions only flush it)
    probe.start_worker(LKP_USER_PROVIDER="1", LKP_MODE="connect_hold", LKP_HOLD="0.3")
    job_id = probe.dispatch(room="room-user-provider")
    probe.wait_span(job_id, "job", timeout=60)
    spans = probe.wait_span(job_id, "job_entrypoint", timeout=10) and probe.trace(job_id)
    for name in ("process.prewarm", "rtc.attempt", "rtc.signal", "rtc.join"):
        assert len(spans.named(name)) == 1, (name, spans.summary())
    connect = spans.phase("room_connect" if spans.named("room_connect") else "job.connect")
    assert connect.end and any(k.startswith("lk_probe.ice.") for k in connect.attributes)


@pytest.mark.lk_netns
@pytest.mark.parametrize("user_provider", ["0", "1"])
def test_phases_still_open_when_the_job_ends_are_closed_and_exported(probe, user_provider):
    # the job gives up while its signal upgrade hangs: the engine phases are ended as incomplete at the job's end
    # (with a user provider, before livekit-agents 1.3–1.7 shut that provider down in JobContext._on_cleanup)
    probe.double.faults.add("signal_upgrade_hang", count=None)
    probe.start_worker(LKP_MODE="connect_stuck", LKP_HOLD="1", LKP_USER_PROVIDER=user_provider)
    job_id = probe.dispatch(room="room-stuck")
    probe.wait_span(job_id, "job", timeout=60)
    attempt = probe.wait_span(job_id, "rtc.attempt", timeout=10)
    spans = probe.trace(job_id)
    signal = spans.phase("rtc.signal")
    gave_up = probe.markers("giving_up")[0]["t"]
    for s in (attempt, signal):
        assert s.error and s.attributes["error.type"] == "incomplete", s.attributes
        assert s.end >= gave_up
    assert signal.parent_id == attempt.span_id
