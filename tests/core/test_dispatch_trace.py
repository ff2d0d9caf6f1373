"""One trace from the dispatch to the agent's join: a dispatcher in this process (lk_probe.install(), OTLP export)
dispatches through the real livekit.api client; the real worker and job process take the job and join the room."""

from __future__ import annotations

import asyncio

import pytest
from livekit import api
from opentelemetry import trace

import lk_probe
from lk_probe import _ids, _provider, _watch

pytestmark = [pytest.mark.e2e, pytest.mark.lk_netns]


async def _dispatcher_calls(probe, install_from_env, otlp_receiver, how: str):
    install_from_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp_receiver.http_endpoint,
                     OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf", OTEL_SERVICE_NAME="backend",
                     LK_PROBE_DISPATCH_WATCH="30", LK_PROBE_STRICT="1")
    d = probe.double
    handler = _provider.provider().get_tracer("backend").start_span("POST /sessions")
    async with api.LiveKitAPI(url=d.http_url, api_key=d.api_key, api_secret=d.api_secret) as lk:
        with trace.use_span(handler, end_on_exit=True):
            if how == "create_dispatch":
                await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="probe",
                                                                                       room="room-dt"))
            else:
                await lk.room.create_room(api.CreateRoomRequest(
                    name="room-dt", agents=[api.RoomAgentDispatch(agent_name="probe")]))
    # the watch runs on in the background after the caller's client is closed
    assert _watch.active() == 1
    results = await asyncio.gather(*list(_watch._active))
    await asyncio.to_thread(lk_probe.flush)
    return handler, results[0]


@pytest.mark.parametrize("how", ["create_dispatch", "create_room"])
async def test_one_trace_from_dispatch_to_join(probe, install_from_env, otlp_receiver, how):
    import livekit.agents

    probe.start_worker(LKP_MODE="connect_hold", LKP_HOLD="1")
    handler, r = await _dispatcher_calls(probe, install_from_env, otlp_receiver, how)
    assert r.outcome == "joined", r
    assert r.api_calls <= 12, r  # a handful of calls for a normal join
    tid = format(_ids.dispatch_trace_id_for(r.dispatch_id), "032x")
    job = await asyncio.to_thread(probe.rx.wait_for, lambda s: s.trace_id == tid and s.name == "job", 30)
    await asyncio.to_thread(probe.rx.wait_for, lambda s: s.trace_id == tid and s.name == "rtc.join", 30)
    spans = probe.rx.spans().trace(tid)
    spans.assert_no_duplicates()
    wait = spans.phase("dispatch.wait")
    hsc = handler.get_span_context()
    handler_link = (format(hsc.trace_id, "032x"), format(hsc.span_id, "016x"))
    assert wait.resource.get("service.name") == "backend" and job.resource.get("service.name") == "probe-agent"
    if how == "create_dispatch":
        create = spans.phase("dispatch.create")
        assert create.parent_id is None and (create.links[0].trace_id, create.links[0].span_id) == handler_link
        assert wait.parent_id == create.span_id
    else:  # CreateRoom answers without dispatch ids: the watch finds the dispatch, its wait is linked to room.create
        assert not spans.named("dispatch.create") and wait.parent_id is None
        room_create = probe.rx.spans().phase("room.create")
        assert room_create.trace_id == handler_link[0] and room_create.parent_id == handler_link[1]
        assert [(lk_.trace_id, lk_.span_id) for lk_ in wait.links] == [(room_create.trace_id, room_create.span_id)]
    # the worker's and the job process's spans, down to the join, are in the dispatch's trace
    entry = spans.phase("job_entrypoint")
    assert entry.parent_id == job.span_id and job.parent_id is None
    assert job.attributes["lk.dispatch_id"] == r.dispatch_id == wait.attributes["lk.dispatch_id"]
    assert job.attributes["lk.job_id"] == r.job_id == wait.attributes["lk.job_id"]
    agents_has_room_connect = tuple(int(x) for x in livekit.agents.__version__.split(".")[:3]) >= (1, 8, 2)
    spans.phase("room_connect" if agents_has_room_connect else "job.connect")
    assert spans.phase("rtc.join").trace_id == tid
    # the wait agrees with the double's event log
    a = wait.attributes
    assert a["lk_probe.outcome"] == "joined" and wait.status_code != "ERROR"
    assert a["lk.agent.identity"] == r.identity and a["lk_probe.dispatch.job_state"] == "JS_RUNNING"
    created = probe.double.events.of_kind("dispatch_created", lambda e: e["dispatch"] == r.dispatch_id)[0]
    joined = probe.double.events.of_kind("participant_joined", lambda e: e["identity"] == r.identity)[0]
    assert abs(wait.end - joined.t) < 0.05, (wait.end, joined.t)
    assert wait.start <= created.t + 0.05 and abs(wait.duration - a["lk_probe.dispatch.joined_after_s"]) < 0.01
    assert wait.start <= job.start and entry.start < wait.end
    from lk_probe import _errors

    assert not _errors.errors
