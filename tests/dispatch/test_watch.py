"""The dispatch watch: each outcome against the server double, driven through the real livekit.api client."""

from __future__ import annotations

import asyncio
import gc
import resource
import time

import pytest
from livekit import api

import lk_probe
from lk_probe import _watch

from .conftest import join_agent, lkapi


async def dispatch(double, room: str, agent: str = "support") -> tuple[api.AgentDispatch, int]:
    t0 = time.time_ns()
    async with lkapi(double) as lk:
        d = await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name=agent, room=room))
    return d, t0


def wait_span(capspans):
    return capspans.phase("dispatch.wait")


async def test_joined_ends_at_the_participants_join(capspans, lk_double, creds):
    d, t0 = await dispatch(lk_double, "w-joined")
    task = lk_probe.watch_dispatch("w-joined", d.id, timeout=10, started_at_ns=t0, **creds)
    await asyncio.sleep(0.6)
    p = join_agent(lk_double, "w-joined", "agent-xyz")
    r = await task
    assert r.outcome == "joined" and r.joined and r.identity == "agent-xyz"
    assert r.job_id == d.state.jobs[0].id and r.job_state == "JS_PENDING"  # no worker: the job is parked
    assert abs(r.joined_after_s - (p.joined_at - t0 / 1e9)) < 0.05
    assert 2 <= r.api_calls <= 10, r  # a handful of calls, not a busy loop
    s = wait_span(capspans)
    assert s.status_code != "ERROR" and s.attributes["lk_probe.outcome"] == "joined"
    assert abs(s.end - p.joined_at) < 0.05 and abs(s.start - t0 / 1e9) < 0.001
    assert s.attributes["lk.dispatch_id"] == d.id and s.attributes["lk.job_id"] == d.state.jobs[0].id
    assert s.attributes["lk_probe.dispatch.job_state"] == "JS_PENDING"
    assert s.trace_id == capspans.phase("dispatch.create").trace_id  # the dispatch's trace
    assert not capspans.spans.named("dispatch.list")  # the watch's own calls are counted, not traced


async def test_phantom_dispatch_ends_state_mismatch_at_the_bound(capspans, lk_double, creds):
    lk_double.faults.add("dispatch_phantom", identity="ghost")
    d, t0 = await dispatch(lk_double, "w-phantom", agent="ghost")
    r = await lk_probe.watch_dispatch("w-phantom", d.id, timeout=2.0, started_at_ns=t0, **creds)
    assert r.outcome == "state_mismatch" and r.job_state == "JS_RUNNING" and r.error_type == "state_mismatch"
    assert 1.9 < r.elapsed_s < 3.5, r
    s = wait_span(capspans)
    assert s.status_code == "ERROR" and s.attributes["error.type"] == "state_mismatch"
    assert s.attributes["lk_probe.dispatch.job_state"] == "JS_RUNNING"
    assert s.attributes["lk_probe.dispatch.polls"] == r.polls >= 3
    assert "JS_RUNNING" in s.status_message
    assert not lk_double.events.of_kind("job_offered", lambda e: e["dispatch"] == d.id)  # no worker saw it


async def test_pending_job_never_joins(capspans, lk_double, creds):
    d, t0 = await dispatch(lk_double, "w-never")
    r = await lk_probe.watch_dispatch("w-never", d.id, timeout=1.5, started_at_ns=t0, **creds)
    assert r.outcome == "never_joined" and r.job_state == "JS_PENDING" and r.listed
    assert wait_span(capspans).attributes["error.type"] == "never_joined"


async def test_failed_job(capspans, lk_double, creds):
    from livekit.protocol import agent

    d, t0 = await dispatch(lk_double, "w-failed")
    task = lk_probe.watch_dispatch("w-failed", d.id, timeout=10, started_at_ns=t0, **creds)

    def fail() -> None:  # what a worker's UpdateJobStatus(JS_FAILED) leaves in the double's job record
        st = lk_double.agent.jobs[d.state.jobs[0].id].job.state
        st.status, st.error = agent.JS_FAILED, "entrypoint raised ValueError"

    await asyncio.sleep(0.3)
    lk_double.call(fail)
    r = await task
    assert r.outcome == "failed" and r.job_state == "JS_FAILED" and r.job_error == "entrypoint raised ValueError"
    s = wait_span(capspans)
    assert s.attributes["error.type"] == "job_failed"
    assert s.attributes["lk_probe.dispatch.job_error"] == "entrypoint raised ValueError"


@pytest.mark.parametrize("how", ["delete_room", "delete_dispatch"])
async def test_room_or_dispatch_deleted_mid_watch(capspans, lk_double, creds, how):
    d, t0 = await dispatch(lk_double, f"w-{how}")
    task = lk_probe.watch_dispatch(d.room, d.id, timeout=10, started_at_ns=t0, **creds)
    await asyncio.sleep(0.5)
    async with lkapi(lk_double) as lk:
        if how == "delete_room":
            await lk.room.delete_room(api.DeleteRoomRequest(room=d.room))
        else:
            await lk.agent_dispatch.delete_dispatch(d.id, d.room)
    r = await task
    assert r.outcome == ("room_gone" if how == "delete_room" else "deleted"), r
    assert r.elapsed_s < 4
    assert wait_span(capspans).attributes["error.type"] == r.outcome


async def test_follows_the_newest_dispatch_of_an_agent_without_its_id(capspans, lk_double, creds):
    async with lkapi(lk_double) as lk:
        await lk.room.create_room(api.CreateRoomRequest(
            name="w-room", agents=[api.RoomAgentDispatch(agent_name="stt-agent")]))
    task = lk_probe.watch_dispatch("w-room", agent_name="stt-agent", timeout=10, **creds)
    await asyncio.sleep(0.3)
    join_agent(lk_double, "w-room", "agent-stt")
    r = await task
    assert r.outcome == "joined" and r.dispatch_id and r.dispatch_id.startswith("AD_") and r.listed
    from lk_probe import _ids

    assert wait_span(capspans).trace_id == format(_ids.dispatch_trace_id_for(r.dispatch_id), "032x")


async def test_bad_credentials_end_at_once(capspans, lk_double, creds):
    r = await lk_probe.watch_dispatch("w-auth", "AD_x", timeout=10, **{**creds, "api_secret": "wrong"})
    assert r.outcome == "api_error" and r.error_type == "unauthenticated" and r.elapsed_s < 2
    assert wait_span(capspans).attributes["error.type"] == "unauthenticated"


async def test_without_a_loop_or_credentials_nothing_raises(capspans, unused_tcp_port):
    assert await asyncio.to_thread(lk_probe.watch_dispatch, "r", "AD_x") is None  # no running loop
    r = await lk_probe.watch_dispatch("r", "AD_x", timeout=1, url="", api_key="", api_secret="")
    assert r.outcome == "api_error"


async def test_thousand_watches_against_an_unreachable_server(capspans, unused_tcp_port):
    """Each ends with a clear outcome within its bound; nothing raises, no task is left, memory stays bounded."""
    url = f"http://127.0.0.1:{unused_tcp_port}"
    capspans.clear()
    before = {t for t in asyncio.all_tasks()}
    gc.collect()
    objects_before = len(gc.get_objects())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    t = time.monotonic()
    tasks = [lk_probe.watch_dispatch(f"r{i}", f"AD_{i}", timeout=3, url=url, api_key="k", api_secret="s" * 32)
             for i in range(1000)]
    results = await asyncio.gather(*tasks)
    took = time.monotonic() - t
    assert {r.outcome for r in results} == {"unreachable"}, {r.outcome for r in results}
    # refused (most); a call cut at the bound by the busy loop: timeout; a watch whose bound passed before the busy
    # loop let it call at all: "unreachable", saying so in its message
    assert {r.error_type for r in results} <= {"refused", "timeout", "unreachable"}
    assert sum(r.error_type == "refused" for r in results) > 500
    assert all(r.error_type != "unreachable" or "event loop busy" in r.message for r in results)
    # the bound plus the loop's backlog: a watch costs about 1 ms of CPU (its span, its token) on an idle core, so
    # 1,000 started at once put seconds of work on one loop, several times more on the shared, loaded test machine
    assert took < 3 + 8, took
    assert _watch.active() == 0
    await asyncio.sleep(0)
    assert {t for t in asyncio.all_tasks() if not t.done()} - before <= {asyncio.current_task()}
    assert len(capspans.spans.named("dispatch.wait")) == 1000
    del tasks, results
    capspans.clear()
    gc.collect()
    assert len(gc.get_objects()) - objects_before < 20_000  # nothing per watch is kept once it ended
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200_000  # peak growth < 200 MB


def test_without_livekit_api_one_clear_warning_and_no_watch(tmp_path):
    """In a process where livekit-api cannot be imported (a backend that installed lk_probe alone), watch_dispatch()
    says so in one line and returns None: no traceback, no task, no session left open."""
    import subprocess
    import sys

    code = """
import asyncio, sys
sys.modules["livekit.api"] = None  # livekit-api not installed
import lk_probe
async def main():
    tasks = [lk_probe.watch_dispatch("r", "AD_x", url="http://127.0.0.1:9", api_key="k", api_secret="s")
             for _ in range(2)]
    print(tasks, len(asyncio.all_tasks()))
asyncio.run(main())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "[None, None] 1", (r.stdout, r.stderr)
    assert r.stderr.splitlines() == ["lk_probe: watch_dispatch() needs the livekit-api package (pip install "
                                     "livekit-api); not watching"], r.stderr
