"""The Twirp subset of the double, driven by the official livekit.api client (and raw HTTP for error shapes)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from livekit import api

from lk_probe.testing import ParticipantState
from lk_probe.testing._core import new_sid


def lkapi(double: Any) -> api.LiveKitAPI:
    return api.LiveKitAPI(url=double.http_url, api_key=double.api_key, api_secret=double.api_secret)


class FakeSession:
    """Stands in for the signalling session of a participant (what _signal puts into ParticipantState.session)."""

    def __init__(self) -> None:
        self.leaves: list[dict[str, Any]] = []

    async def leave(self, *, action: str, reason: str) -> None:
        self.leaves.append({"action": action, "reason": reason})


def add_participant(double: Any, room: str, identity: str, *, kind: str = "standard",
                    session: Any = None) -> ParticipantState:
    def add() -> ParticipantState:
        r = double.ensure_room(room, created_by="api")
        p = ParticipantState(identity=identity, sid=new_sid("PA_"), name=identity.title(), kind=kind,
                             attributes={"a": "1"}, session=session)
        r.participants[identity] = p
        return p

    return double.call(add)


async def test_rooms_create_list_delete(lk_double):
    async with lkapi(lk_double) as lk:
        room = await lk.room.create_room(api.CreateRoomRequest(name="tw-1", metadata="m", empty_timeout=33))
        assert room.sid.startswith("RM_") and room.name == "tw-1" and room.metadata == "m"
        assert room.empty_timeout == 33 and room.creation_time > 0
        again = await lk.room.create_room(api.CreateRoomRequest(name="tw-1"))
        assert again.sid == room.sid  # existing room returned, like the real server
        await lk.room.create_room(api.CreateRoomRequest(name="tw-2"))
        names = sorted(r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms)
        assert names == ["tw-1", "tw-2"]
        only = (await lk.room.list_rooms(api.ListRoomsRequest(names=["tw-2"]))).rooms
        assert [r.name for r in only] == ["tw-2"]
        await lk.room.delete_room(api.DeleteRoomRequest(room="tw-1"))
        assert [r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms] == ["tw-2"]
        with pytest.raises(api.TwirpError) as exc:
            await lk.room.delete_room(api.DeleteRoomRequest(room="tw-1"))
        assert exc.value.code == "not_found" and exc.value.status == 404
    kinds = [e.kind for e in lk_double.events]
    assert kinds.count("room_created") == 2 and "room_deleted" in kinds


async def test_participants_list_and_remove_through_the_session(lk_double):
    session = FakeSession()
    add_participant(lk_double, "tw-p", "alice", session=session)
    add_participant(lk_double, "tw-p", "agent-AJ_x", kind="agent")
    async with lkapi(lk_double) as lk:
        res = await lk.room.list_participants(api.ListParticipantsRequest(room="tw-p"))
        by_id = {p.identity: p for p in res.participants}
        assert set(by_id) == {"alice", "agent-AJ_x"}
        assert by_id["alice"].sid.startswith("PA_") and by_id["alice"].name == "Alice"
        assert by_id["agent-AJ_x"].kind == api.ParticipantInfo.AGENT
        assert dict(by_id["alice"].attributes) == {"a": "1"}
        await lk.room.remove_participant(api.RoomParticipantIdentity(room="tw-p", identity="alice"))
        assert session.leaves == [{"action": "DISCONNECT", "reason": "RemoveParticipant"}]
        await lk.room.remove_participant(api.RoomParticipantIdentity(room="tw-p", identity="agent-AJ_x"))
        assert not (await lk.room.list_participants(api.ListParticipantsRequest(room="tw-p"))).participants
        with pytest.raises(api.TwirpError) as exc:
            await lk.room.remove_participant(api.RoomParticipantIdentity(room="tw-p", identity="alice"))
        assert exc.value.code == "not_found"
        with pytest.raises(api.TwirpError) as exc:
            await lk.room.list_participants(api.ListParticipantsRequest(room="nope"))
        assert exc.value.code == "not_found" and exc.value.status == 404


async def test_delete_room_disconnects_sessions(lk_double):
    s1, s2 = FakeSession(), FakeSession()
    add_participant(lk_double, "tw-del", "a", session=s1)
    add_participant(lk_double, "tw-del", "b", session=s2)
    async with lkapi(lk_double) as lk:
        await lk.room.delete_room(api.DeleteRoomRequest(room="tw-del"))
    assert s1.leaves == s2.leaves == [{"action": "DISCONNECT", "reason": "DeleteRoom"}]
    assert "tw-del" not in lk_double.call(lambda: set(lk_double.rooms))


async def test_dispatch_create_list_delete_terminates_the_job(lk_double, fake_worker):
    w = await fake_worker("tw-agent")
    async with lkapi(lk_double) as lk:
        d = await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="tw-agent", room="tw-d", metadata="meta"))
        req = await w.recv_kind("availability")
        assert req.job.id == d.state.jobs[0].id and req.job.dispatch_id == d.id and req.job.metadata == "meta"
        assert req.job.state.worker_id == w.id and req.job.state.started_at > 0
        await w.answer(req.job.id, participant_identity="my-agent")
        assignment = await w.recv_kind("assignment")
        assert assignment.job.id == req.job.id and assignment.url == ""
        claims = api.TokenVerifier(lk_double.api_key, lk_double.api_secret).verify(assignment.token)
        assert claims.identity == "my-agent" and claims.kind == "agent"
        assert claims.video.room == "tw-d" and claims.video.room_join and claims.video.agent

        listed = await lk.agent_dispatch.list_dispatch("tw-d")
        assert [x.id for x in listed] == [d.id]
        assert listed[0].state.jobs[0].state.participant_identity == "my-agent"
        assert await lk.agent_dispatch.get_dispatch(d.id, "tw-d") is not None

        deleted = await lk.agent_dispatch.delete_dispatch(d.id, "tw-d")
        assert deleted.id == d.id and deleted.state.deleted_at > 0
        term = await w.recv_kind("termination")
        assert term.job_id == req.job.id
        assert await lk.agent_dispatch.list_dispatch("tw-d") == []
        with pytest.raises(api.TwirpError) as exc:
            await lk.agent_dispatch.delete_dispatch(d.id, "tw-d")
        assert exc.value.code == "not_found"
    lk_double.events.wait_for_sync("job_terminated", lambda e: e["job"] == req.job.id)


async def test_create_room_with_agents_dispatches_them(lk_double, fake_worker):
    w = await fake_worker("tw-room-agent")
    async with lkapi(lk_double) as lk:
        await lk.room.create_room(api.CreateRoomRequest(
            name="tw-ra", agents=[api.RoomAgentDispatch(agent_name="tw-room-agent", metadata="x")]))
        req = await w.recv_kind("availability")
        assert req.job.room.name == "tw-ra" and req.job.metadata == "x"
        listed = await lk.agent_dispatch.list_dispatch("tw-ra")
        assert [x.agent_name for x in listed] == ["tw-room-agent"]


@pytest.mark.parametrize("case,status,code", [
    ("no_token", 401, "unauthenticated"),
    ("bad_token", 401, "unauthenticated"),
    ("no_grant", 403, "permission_denied"),
    ("other_room", 403, "permission_denied"),
    ("malformed", 400, "malformed"),
    ("bad_content_type", 404, "bad_route"),
])
async def test_twirp_errors_are_json_with_the_right_status(lk_double, case, status, code):
    d = lk_double
    admin = d.token("admin", "tw-e", room_admin=True)
    headers = {"Content-Type": "application/protobuf", "Authorization": f"Bearer {admin}"}
    body = api.ListParticipantsRequest(room="tw-e").SerializeToString()
    if case == "no_token":
        del headers["Authorization"]
    elif case == "bad_token":
        headers["Authorization"] = "Bearer not.a.jwt"
    elif case == "no_grant":
        headers["Authorization"] = f"Bearer {d.token('u', 'tw-e')}"
    elif case == "other_room":
        headers["Authorization"] = f"Bearer {d.token('admin', 'elsewhere', room_admin=True)}"
    elif case == "malformed":
        body = b"\x0a\xff\xff"
    elif case == "bad_content_type":
        headers["Content-Type"] = "text/plain"
    async with aiohttp.ClientSession() as s:
        async with s.post(d.http_url + "/twirp/livekit.RoomService/ListParticipants", data=body,
                          headers=headers) as r:
            assert r.status == status
            err = json.loads(await r.text())
    assert err["code"] == code and err["msg"]
    assert d.events.of_kind("twirp_error", lambda e: e["code"] == code)


async def test_twirp_json_encoding(lk_double):
    token = lk_double.token("admin", "", room_create=True, room_list=True)
    async with aiohttp.ClientSession() as s:
        async with s.post(lk_double.http_url + "/twirp/livekit.RoomService/CreateRoom", json={"name": "tw-json"},
                          headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200 and r.content_type == "application/json"
            room = await r.json()
        assert room["name"] == "tw-json" and room["sid"].startswith("RM_")
        async with s.post(lk_double.http_url + "/twirp/livekit.RoomService/ListRooms", json={},
                          headers={"Authorization": f"Bearer {token}"}) as r:
            assert [x["name"] for x in (await r.json())["rooms"]] == ["tw-json"]


async def test_cli_serves_the_double_and_stops_by_itself():
    import asyncio
    import re
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lk_probe.testing.server", "--port", "0", "--duration", "4",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        env: dict[str, str] = {}
        while len(env) < 3:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line, "the CLI ended before printing its address"
            if m := re.match(r"export (LIVEKIT_\w+)=(\S+)", line):
                env[m[1]] = m[2]
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+", env["LIVEKIT_URL"])
        async with api.LiveKitAPI(url=env["LIVEKIT_URL"], api_key=env["LIVEKIT_API_KEY"],
                                  api_secret=env["LIVEKIT_API_SECRET"]) as lk:
            await lk.room.create_room(api.CreateRoomRequest(name="cli-room"))
            rooms = (await lk.room.list_rooms(api.ListRoomsRequest())).rooms
        assert [r.name for r in rooms] == ["cli-room"]
        rest = (await asyncio.wait_for(proc.stdout.read(), 15)).decode()  # ends by itself after --duration
        assert await proc.wait() == 0
        assert re.search(r"events: .*room_created=1", rest), rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
