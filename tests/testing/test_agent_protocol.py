"""The worker protocol of the double against a REAL livekit-agents worker: dispatch paths, faults, termination,
and the lk_double fixture's leak check."""

from __future__ import annotations

import asyncio
import os
import subprocess
import textwrap
from pathlib import Path
import sys
import time
from typing import Any, Awaitable, Callable

import pytest
from livekit import api

from lk_probe.testing import FAULTS, LiveKitDouble, verify_token
from lk_probe.testing.fixtures import check_leftovers

MARKER_AGENT = Path(__file__).parent / "agents" / "marker_agent.py"

pytestmark = pytest.mark.e2e


def lkapi(double: LiveKitDouble, fn: Callable[[api.LiveKitAPI], Awaitable[Any]]) -> Any:
    """Run one call of the official livekit.api client against the double."""

    async def run() -> Any:
        async with api.LiveKitAPI(url=double.http_url, api_key=double.api_key, api_secret=double.api_secret) as lk:
            return await fn(lk)

    return asyncio.run(run())


def dispatch(double: LiveKitDouble, agent_name: str, room: str, metadata: str = "") -> api.AgentDispatch:
    return lkapi(double, lambda lk: lk.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=metadata)))


def start_worker(agent_worker: Callable[..., Any], markers: Any, agent_name: str, **env: str) -> Any:
    # stop_timeout: 1.4.6 may ignore SIGTERM after a job (see AgentWorker.stop); do not wait 10 s for it
    w = agent_worker(MARKER_AGENT, agent_name=agent_name, env={**markers.env, **env}, stop_timeout=4)
    w.wait_registered(timeout=30)
    return w


def one(double: LiveKitDouble, kind: str, job: str) -> Any:
    evs = double.events.of_kind(kind, lambda e: e.get("job") == job)
    assert len(evs) == 1, f"expected one {kind} for {job}, got {evs}"
    return evs[0]


# ------------------------------------------------------------------------------------------------ dispatch paths


def test_explicit_dispatch_with_livekit_api_reaches_entrypoint(lk_double, agent_worker, markers):
    w = start_worker(agent_worker, markers, "lkp-explicit")
    d = dispatch(lk_double, "lkp-explicit", "room-explicit", metadata="hello")
    assert d.id.startswith("AD_") and d.agent_name == "lkp-explicit" and d.room == "room-explicit"
    job_id = d.state.jobs[0].id
    assert job_id.startswith("AJ_")

    running = lk_double.events.wait_for_sync("job_status", lambda e: e["job"] == job_id and
                                             e["status"] == "JS_RUNNING", timeout=15)
    entry = markers.wait("entrypoint", lambda m: m["job_id"] == job_id)
    assert entry["dispatch_id"] == d.id and entry["room"] == "room-explicit" and entry["metadata"] == "hello"
    assert entry["agent_name"] == "lkp-explicit" and entry["worker_id"] == w.worker_id
    assert entry["status"] == 1 and entry["started_at"] > 0  # JS_RUNNING, set by the double like the real server
    room = lk_double.call(lambda: lk_double.rooms["room-explicit"])
    assert entry["room_sid"] == room.sid

    created = one(lk_double, "dispatch_created", job_id)
    offered = one(lk_double, "job_offered", job_id)
    answer = one(lk_double, "job_availability", job_id)
    assigned = one(lk_double, "job_assigned", job_id)
    assert created.seq < offered.seq < answer.seq < assigned.seq < running.seq
    assert created["dispatch"] == offered["dispatch"] == assigned["dispatch"] == d.id
    assert offered["worker"] == answer["worker"] == assigned["worker"] == running["worker"] == w.worker_id
    assert answer["available"] is True and answer["identity"] == assigned["identity"] == f"agent-{job_id}"
    assert offered["room_sid"] == assigned["room_sid"] == room.sid


def test_automatic_dispatch_when_a_join_creates_the_room(lk_double, agent_worker, markers):
    w = start_worker(agent_worker, markers, "")
    room = lk_double.ensure_room("room-auto", created_by="join")
    created = lk_double.events.wait_for_sync("dispatch_created", lambda e: e["room"] == "room-auto")
    assert created["source"] == "automatic" and created["agent_name"] == ""
    entry = markers.wait("entrypoint", lambda m: m["room"] == "room-auto")
    assert entry["job_id"] == created["job"] and entry["room_sid"] == room.sid and entry["worker_id"] == w.worker_id
    # a room created through the API gets no automatic dispatch
    lk_double.ensure_room("room-api", created_by="api")
    assert not lk_double.events.of_kind("dispatch_created", lambda e: e["room"] == "room-api")


def test_room_config_dispatch_from_the_join_token(lk_double, agent_worker, markers):
    w = start_worker(agent_worker, markers, "lkp-rc")
    token = lk_double.token("user-1", "room-rc",
                            room_config=api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name="lkp-rc",
                                                                                            metadata="from-token")]))
    claims = verify_token(token, lk_double.api_key, lk_double.api_secret)
    assert claims["roomConfig"]["agents"][0]["agentName"] == "lkp-rc"
    # what signalling does when this join creates the room
    lk_double.ensure_room("room-rc", created_by="join", room_config=claims["roomConfig"])
    created = lk_double.events.wait_for_sync("dispatch_created", lambda e: e["room"] == "room-rc")
    assert created["source"] == "room_config" and created["agent_name"] == "lkp-rc"
    entry = markers.wait("entrypoint", lambda m: m["room"] == "room-rc")
    assert entry["metadata"] == "from-token" and entry["worker_id"] == w.worker_id
    assert len(lk_double.events.of_kind("dispatch_created", lambda e: e["room"] == "room-rc")) == 1  # no automatic


async def test_room_config_dispatch_through_a_signalling_join(lk_double, agent_worker, markers):
    """The whole path: a participant's join (signalling WebSocket, no WebRTC needed) creates the room and the
    token's roomConfig dispatches the agent."""
    import aiohttp

    if lk_double.signal is None:
        pytest.skip("signalling (_signal) is not available")
    w = await asyncio.to_thread(start_worker, agent_worker, markers, "lkp-join")
    token = lk_double.token("caller", "room-join", room_config={"agents": [{"agent_name": "lkp-join",
                                                                            "metadata": "via-join"}]})
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{lk_double.url}/rtc?sdk=python&protocol=16&auto_subscribe=1",
                                   headers={"Authorization": f"Bearer {token}"})
        try:
            created = await lk_double.events.wait_for("room_created", lambda e: e["room"] == "room-join")
            assert created["created_by"] == "join" and created["agents"] == ["lkp-join"]
            entry = await asyncio.to_thread(markers.wait, "entrypoint", lambda m: m["room"] == "room-join")
            assert entry["metadata"] == "via-join" and entry["worker_id"] == w.worker_id
            assert entry["room_sid"] == created["room_sid"]
        finally:
            await ws.close()


def test_terminate_job_ends_the_running_job(lk_double, agent_worker, markers):
    w = start_worker(agent_worker, markers, "lkp-term", LKP_HOLD="120")
    d = lk_double.create_dispatch("room-term", "lkp-term")
    job_id = d.jobs[0].job.id
    markers.wait("entrypoint", lambda m: m["job_id"] == job_id)
    t0 = time.time()
    assert lk_double.call(lk_double.terminate_job, job_id) is True
    lk_double.events.wait_for_sync("job_terminated", lambda e: e["job"] == job_id)
    # 1.4.6 ends the job at once; 1.8.9 first waits up to 15 s for the entrypoint to return
    ended = lk_double.events.wait_for_sync("job_status", lambda e: e["job"] == job_id and
                                           e["status"] in ("JS_SUCCESS", "JS_FAILED"), timeout=20)
    assert ended.t - t0 < 20 < 120
    assert w.returncode is None  # the worker keeps running


# ------------------------------------------------------------------------------------------------ faults


def test_fault_catalogue():
    assert {"job_offer_delay", "assignment_delay", "assignment_never", "dispatch_phantom"} <= set(FAULTS)
    double = LiveKitDouble()  # not started yet: faults can be armed before start()
    assert set(FAULTS) <= set(double.fault_descriptions)
    f = double.faults.add("job_offer_delay", identity="x", delay=0.5)
    assert f.delay == 0.5 and double.faults.peek("job_offer_delay", "x") is f
    assert double.faults.peek("job_offer_delay", "y") is None
    with pytest.raises(ValueError, match="unknown fault 'job_offer_dleay'"):
        double.faults.add("job_offer_dleay")


def test_job_offer_delay(lk_double, agent_worker, markers):
    start_worker(agent_worker, markers, "lkp-delay")
    lk_double.faults.add("job_offer_delay", identity="lkp-delay", delay=2.0)
    d = dispatch(lk_double, "lkp-delay", "room-delay")
    job_id = d.state.jobs[0].id
    offered = lk_double.events.wait_for_sync("job_offered", lambda e: e["job"] == job_id, timeout=10)
    created = one(lk_double, "dispatch_created", job_id)
    assert offered.t - created.t >= 2.0
    markers.wait("entrypoint", lambda m: m["job_id"] == job_id)  # the job still runs, just later


def test_assignment_delay(lk_double, agent_worker, markers):
    start_worker(agent_worker, markers, "lkp-adelay")
    lk_double.faults.add("assignment_delay", identity="lkp-adelay", delay=1.5)
    job_id = lk_double.create_dispatch("room-adelay", "lkp-adelay").jobs[0].job.id
    assigned = lk_double.events.wait_for_sync("job_assigned", lambda e: e["job"] == job_id, timeout=10)
    assert assigned.t - one(lk_double, "job_availability", job_id).t >= 1.5
    markers.wait("entrypoint", lambda m: m["job_id"] == job_id)


def test_assignment_never_hits_the_worker_assignment_timeout(lk_double, agent_worker, markers):
    w = start_worker(agent_worker, markers, "lkp-never")
    lk_double.faults.add("assignment_never", identity="lkp-never")
    job_id = lk_double.create_dispatch("room-never", "lkp-never").jobs[0].job.id
    lk_double.events.wait_for_sync("assignment_withheld", lambda e: e["job"] == job_id)
    line = w.wait_output(rf"assignment for job {job_id} timed out", timeout=15)
    assert job_id in line
    assert one(lk_double, "job_availability", job_id)["available"] is True
    assert not lk_double.events.of_kind("job_assigned", lambda e: e["job"] == job_id)
    assert not [m for m in markers.all() if m["what"] == "entrypoint"]


def test_dispatch_phantom(lk_double, agent_worker, markers):
    start_worker(agent_worker, markers, "lkp-phantom")
    lk_double.faults.add("dispatch_phantom", identity="lkp-phantom")
    phantom = dispatch(lk_double, "lkp-phantom", "room-phantom")
    job_id = phantom.state.jobs[0].id
    listed = lkapi(lk_double, lambda lk: lk.agent_dispatch.list_dispatch("room-phantom"))
    assert [x.id for x in listed] == [phantom.id]
    assert listed[0].state.jobs[0].id == job_id
    assert listed[0].state.jobs[0].state.status == 1  # JS_RUNNING
    # the fault fired once: a second dispatch is offered and runs, the phantom one never was
    real = dispatch(lk_double, "lkp-phantom", "room-phantom")
    markers.wait("entrypoint", lambda m: m["job_id"] == real.state.jobs[0].id)
    assert not lk_double.events.of_kind("job_offered", lambda e: e["job"] == job_id)
    assert not [m for m in markers.all() if m["job_id"] == job_id]


def test_full_worker_rejects_and_the_job_is_parked_then_unparked(lk_double, agent_worker, markers):
    full = start_worker(agent_worker, markers, "lkp-full", LKP_LOAD="1.0", LKP_LOAD_THRESHOLD="0.5")
    job_id = lk_double.create_dispatch("room-full", "lkp-full").jobs[0].job.id
    answer = lk_double.events.wait_for_sync("job_availability", lambda e: e["job"] == job_id, timeout=10)
    assert answer["available"] is False and answer["worker"] == full.worker_id
    lk_double.events.wait_for_sync("job_parked", lambda e: e["job"] == job_id, timeout=10)
    # a worker with room reports WS_AVAILABLE -> the parked job is offered again and lands there
    free = start_worker(agent_worker, markers, "lkp-full")
    unparked = lk_double.events.wait_for_sync("job_unparked", lambda e: e["job"] == job_id, timeout=15)
    assigned = lk_double.events.wait_for_sync("job_assigned", lambda e: e["job"] == job_id, timeout=15)
    assert assigned["worker"] == free.worker_id and assigned.seq > unparked.seq
    entry = markers.wait("entrypoint", lambda m: m["job_id"] == job_id)
    assert entry["worker_id"] == free.worker_id


def test_user_reject_ends_the_job_without_parking(lk_double, agent_worker, markers):
    w = start_worker(agent_worker, markers, "lkp-reject", LKP_REJECT="1")
    job_id = lk_double.create_dispatch("room-reject", "lkp-reject").jobs[0].job.id
    answer = lk_double.events.wait_for_sync("job_availability", lambda e: e["job"] == job_id, timeout=10)
    # JobRequest.reject() defaults to terminate=True: "the job will not be assigned to another worker"
    assert answer["available"] is False and answer["terminate"] is True and answer["worker"] == w.worker_id
    ended = lk_double.events.wait_for_sync("job_terminated", lambda e: e["job"] == job_id)
    assert "terminate" in ended["reason"]
    assert not lk_double.events.of_kind("job_parked", lambda e: e["job"] == job_id)


async def test_parking_follows_worker_status(lk_double, fake_worker):
    from livekit.protocol import agent

    w1 = await fake_worker("park")
    d = lk_double.create_dispatch("room-park", "park")
    job_id = d.jobs[0].job.id
    req = await w1.recv_kind("availability")
    await w1.answer(req.job.id, available=False)  # like the load gate: terminate=False
    await lk_double.events.wait_for("job_parked", lambda e: e["job"] == job_id)
    # a status report that is not WS_AVAILABLE leaves it parked; WS_AVAILABLE unparks it
    await w1.send(agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(status=agent.WS_FULL, load=1.0)))
    await lk_double.events.wait_for("worker_status", lambda e: e["status"] == "WS_FULL")
    assert not lk_double.events.of_kind("job_unparked")
    await w1.send(agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(status=agent.WS_AVAILABLE, load=0.1)))
    unparked = await lk_double.events.wait_for("job_unparked", lambda e: e["job"] == job_id)
    assert unparked["worker"] == w1.id
    again = await w1.recv_kind("availability")
    assert again.job.id == job_id  # the same job id, offered again
    await w1.answer(job_id)
    assignment = await w1.recv_kind("assignment")
    assert assignment.job.state.worker_id == w1.id and assignment.job.state.status == agent.JS_RUNNING
    # the next matching worker is tried before parking; a worker going away mid-offer is skipped
    w2, w3 = await fake_worker("multi"), await fake_worker("multi")
    job2 = lk_double.create_dispatch("room-multi", "multi").jobs[0].job.id
    offer1 = await lk_double.events.wait_for("job_offered", lambda e: e["job"] == job2)
    first, other = (w2, w3) if offer1["worker"] == w2.id else (w3, w2)
    await first.close()
    req2 = await other.recv_kind("availability")
    assert req2.job.id == job2
    await lk_double.events.wait_for("job_offered", lambda e: e["job"] == job2 and e["worker"] == other.id)
    gone = lk_double.events.of_kind("job_offer_failed", lambda e: e["job"] == job2)
    assert [e["worker"] for e in gone] == [first.id]


# ------------------------------------------------------------------------------------------------ leak check


def test_leak_check_detects_a_task_that_survives_stop():
    double = LiveKitDouble().start_in_thread()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # swallows its cancellation: a leak

    task = double.call(lambda: asyncio.get_running_loop().create_task(stubborn(), name="stubborn"))
    double.stop_thread(timeout=2)
    problems = check_leftovers(double)
    assert any("stubborn" in p for p in problems), problems
    assert task in double.leftover_tasks


def test_leak_check_detects_worker_processes_and_an_open_socket(tmp_path):
    double = LiveKitDouble().start_in_thread()
    assert check_leftovers(double) != []  # still serving: thread and socket are reported
    double.stop_thread()
    assert check_leftovers(double) == []

    class FakeWorker:  # an AgentWorker whose process group still has a member
        def __init__(self) -> None:
            self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                         start_new_session=True)

        def alive_pids(self) -> list[int]:
            from lk_probe.testing._worker import group_members
            return group_members(self.proc.pid)

    fake = FakeWorker()
    try:
        problems = check_leftovers(double, [fake])  # type: ignore[list-item]
        assert any(str(fake.proc.pid) in p for p in problems), problems
    finally:
        fake.proc.kill()
        fake.proc.wait()
    assert check_leftovers(double, [fake]) == []  # type: ignore[list-item]


def test_lk_double_fixture_fails_a_test_that_leaks(tmp_path):
    (tmp_path / "conftest.py").write_text("from lk_probe.testing.fixtures import lk_double  # noqa: F401\n")
    (tmp_path / "test_leak.py").write_text(textwrap.dedent("""
        import asyncio

        def test_leaky(lk_double):
            async def stubborn():
                while True:
                    try:
                        await asyncio.sleep(3600)
                    except asyncio.CancelledError:
                        pass
            lk_double.call(lambda: asyncio.get_running_loop().create_task(stubborn(), name="leaky-task"))

        def test_clean(lk_double):
            assert lk_double.url.startswith("ws://127.0.0.1:")
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:lk_probe", "-p", "no:cacheprovider",
                        "-p", "no:randomly", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "lk_double left things behind" in out and "leaky-task" in out, out
    assert "2 passed, 1 error" in out, out


def test_lk_double_is_a_real_server_when_livekit_url_is_set(tmp_path):
    (tmp_path / "conftest.py").write_text("from lk_probe.testing.fixtures import lk_double  # noqa: F401\n")
    (tmp_path / "test_real.py").write_text(textwrap.dedent("""
        import jwt

        def test_surface(lk_double):
            assert type(lk_double).__name__ == "RealServer"
            assert lk_double.url == "wss://lk.example.invalid" and lk_double.http_url == "https://lk.example.invalid"
            claims = jwt.decode(lk_double.token("alice", "r1", can_publish=False), "s" * 32, algorithms=["HS256"])
            assert claims["iss"] == "key" and claims["video"] == {"roomJoin": True, "room": "r1", "canPublish": False}

        def test_fault_skips(lk_double):
            lk_double.faults.add("job_offer_delay", delay=1)
            raise AssertionError("not reached")

        def test_event_skips(lk_double):
            lk_double.events.wait_for_sync("job_assigned")
            raise AssertionError("not reached")
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env.update(LIVEKIT_URL="wss://lk.example.invalid", LIVEKIT_API_KEY="key", LIVEKIT_API_SECRET="s" * 32)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:lk_probe", "-p", "no:cacheprovider",
                        str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert "1 passed, 2 skipped" in out, out
    assert "job_offer_delay needs the lk_probe double; LIVEKIT_URL points at a real server" in out, out
    assert "'job_assigned' event needs the lk_probe double" in out, out
