"""The worker's link to LiveKit (the /agent WebSocket) in its own trace, and what a job's trace says about it: the
real livekit-agents worker against the server double, whose faults drop the worker's socket, refuse its connects,
or hold a dispatch until a worker registers. A dispatcher in this process (lk_probe.install(), the dispatch watch)
follows the job."""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit import api

import lk_probe
from lk_probe import _ids, _watch

pytestmark = [pytest.mark.e2e, pytest.mark.lk_netns]

# the agent stays in the room longer than the watch's longest pause between looks (2 s), so a look sees it
HOLD = "5"
PARK_S = 2.0  # the least time no worker is registered after the dispatch (then the worker starts: seconds more)


def _install_dispatcher(install_from_env, otlp_receiver) -> None:
    # a bound far above the worker's start-up (seconds; far more on a loaded machine): the join ends the watch
    install_from_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp_receiver.http_endpoint,
                     OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf", OTEL_SERVICE_NAME="backend",
                     LK_PROBE_DISPATCH_WATCH="120", LK_PROBE_STRICT="1")


async def _dispatch(d, room: str) -> _watch.WatchResult:
    """Dispatch through the real client; the watch (started by the dispatch) follows it until the agent joined."""
    async with api.LiveKitAPI(url=d.http_url, api_key=d.api_key, api_secret=d.api_secret) as lk:
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="probe", room=room))
    assert _watch.active() == 1
    return (await asyncio.gather(*list(_watch._active)))[0]


async def _dispatch_trace(probe, r: _watch.WatchResult):
    tid = format(_ids.dispatch_trace_id_for(r.dispatch_id), "032x")
    await asyncio.to_thread(lk_probe.flush)
    job = await asyncio.to_thread(probe.rx.wait_for, lambda s: s.trace_id == tid and s.name == "job", 30)
    return probe.rx.spans().trace(tid), job


def _registrations(double):
    return double.events.of_kind("worker_registered")


async def test_a_job_parked_until_a_worker_registers(probe, install_from_env, otlp_receiver):
    """No worker at dispatch time; one registers later: the job is parked, offered once the worker is there, and the
    dispatch's trace shows the wait and that the worker registered before the offer."""
    _install_dispatcher(install_from_env, otlp_receiver)
    d = probe.double
    watch = asyncio.ensure_future(_dispatch(d, "room-parked"))
    await asyncio.to_thread(d.events.wait_for_sync, "job_parked", None, 10)
    await asyncio.sleep(PARK_S)
    await asyncio.to_thread(probe.start_worker, LKP_MODE="connect_hold", LKP_HOLD=HOLD)
    r = await watch
    assert r.outcome == "joined", r
    spans, job = await _dispatch_trace(probe, r)
    created = d.events.of_kind("dispatch_created")[0]
    registered = _registrations(d)[0]
    unparked = d.events.of_kind("job_unparked")[0]
    offered = d.events.of_kind("job_offered")[0]
    assert created.t < registered.t <= unparked.t <= offered.t and unparked["worker"] == registered["worker"]
    wait = spans.phase("dispatch.wait")
    assert wait.attributes["lk_probe.outcome"] == "joined"
    assert wait.duration >= registered.t - created.t >= PARK_S  # the wait covers the time without a worker
    # the job's span says which registration it arrived on: before the offer, and the worker's own trace has it
    reg_at = job.attributes["lk_probe.worker.registered_at"] / 1e9
    assert abs(reg_at - registered.t) < 0.05 and reg_at < job.start and job.attributes["lk_probe.worker.link_drops"] == 0
    link = await asyncio.to_thread(probe.rx.wait_for, lambda s: s.name == "worker.connect", 10)
    assert link.attributes["lk.job.worker_id"] == registered["worker"] == job.attributes["lk.job.worker_id"]
    assert job.links and job.links[0].trace_id == link.trace_id
    # the status the worker reported to LiveKit for the job, by name, on the job's span
    assert "JS_RUNNING" in [e.attributes["lk_probe.job.status"] for e in job.events if e.name == "job.status"]


async def test_a_dropped_link_its_reconnect_and_a_dispatch_made_in_the_gap(probe, install_from_env, otlp_receiver):
    """The double drops the worker's socket and refuses its first reconnect: the worker's trace shows the drop, both
    attempts (the refused one, agents' 2 s backoff, the one that registers) and the new registration with their
    durations; a dispatch made in the gap is parked, arrives after the re-registration, and its job says so."""
    d = probe.double
    w = await asyncio.to_thread(probe.start_worker, LKP_MODE="connect_hold", LKP_HOLD=HOLD)
    first = w.worker_id
    _install_dispatcher(install_from_env, otlp_receiver)
    d.faults.add("agent_connect_refused", count=1)
    assert d.call(d.agent.drop_worker, first, code=1012)
    await asyncio.to_thread(d.events.wait_for_sync, "worker_refused", None, 10)
    r = await _dispatch(d, "room-gap")  # no worker registered now: parked until the reconnect
    assert r.outcome == "joined", r
    spans, job = await _dispatch_trace(probe, r)
    dropped = d.events.of_kind("worker_dropped")[0]
    refused = d.events.of_kind("worker_refused")[0]
    again = _registrations(d)[1]
    offered = d.events.of_kind("job_offered")[0]
    assert dropped.t < refused.t < again.t <= offered.t
    # the worker's trace: link 1 dropped, a reconnect of two attempts, link 2
    tid = job.links[0].trace_id
    rx = probe.rx
    reconnect = await asyncio.to_thread(rx.wait_for, lambda s: s.trace_id == tid and s.name == "worker.connect" and
                                        s.attributes.get("lk_probe.worker.reconnect") is True, 20)
    await asyncio.to_thread(rx.wait_for, lambda s: s.trace_id == tid and s.name == "worker.link", 20)
    await asyncio.to_thread(rx.wait_for, lambda s: s.parent_id == reconnect.span_id and
                            s.attributes.get("lk_probe.attempt") == 2, 20)
    wt = rx.spans().trace(tid)
    links = wt.named("worker.link")
    assert [s.attributes["lk_probe.outcome"] for s in links] == ["dropped"]  # link 2 is still up
    link1 = links[0]
    assert link1.attributes["error.type"] == "closed" and link1.attributes["lk.job.worker_id"] == first
    assert abs(link1.end - dropped.t) < 0.1, (link1.end, dropped.t)
    import livekit.agents

    # agents 1.7+ raise the close with its code; 1.4 a bare exception without one
    has_code = tuple(int(x) for x in livekit.agents.__version__.split(".")[:2]) >= (1, 7)
    assert link1.attributes.get("lk_probe.worker.close_code") == (1012 if has_code else None)
    connect1, reconnect = sorted(wt.named("worker.connect"), key=lambda s: s.start)
    assert job.links[0].span_id != link1.span_id  # the job links to the second link, still up
    assert connect1.attributes["lk_probe.worker.reconnect"] is False and connect1.attributes["lk_probe.worker.attempts"] == 1
    a = reconnect.attributes
    assert a["lk_probe.worker.reconnect"] is True and a["lk_probe.worker.link_drops"] == 1
    assert a["lk_probe.outcome"] == "registered" and a["lk_probe.worker.attempts"] == 2
    assert a["lk.job.worker_id"] == again["worker"] != first and a["lk_probe.server.version"]
    assert abs(reconnect.start - link1.end) < 0.01 and abs(reconnect.end - again.t) < 0.05
    attempts = sorted((s for s in wt.named("worker.attempt") if s.parent_id == reconnect.span_id),
                      key=lambda s: s.start)
    assert [s.attributes["lk_probe.attempt"] for s in attempts] == [1, 2]
    assert attempts[0].attributes["error.type"] == "http_5xx" and attempts[0].attributes["lk_probe.worker.retry_delay_s"] == 2
    assert attempts[1].attributes["lk_probe.outcome"] == "registered"
    assert abs(attempts[0].end - refused.t) < 0.1 and 1.9 < attempts[1].start - attempts[0].end < 2.2
    assert 1.9 < reconnect.duration < 3.0  # how long the worker was away: agents' backoff plus the connects
    # the job arrived on the new registration, after the drop
    assert job.attributes["lk_probe.worker.link_drops"] == 1
    assert abs(job.attributes["lk_probe.worker.registered_at"] / 1e9 - again.t) < 0.05 < job.start - again.t + 0.05
    wait = spans.phase("dispatch.wait")
    assert wait.start < again.t < job.start < wait.end
