"""Twirp subset of the LiveKit server double: enough for ``livekit.api.LiveKitAPI`` to dispatch agents and manage rooms.

``POST /twirp/livekit.<Service>/<Method>`` with a protobuf body (``application/protobuf``) or Twirp JSON
(``application/json``); the answer uses the same encoding. Errors are Twirp JSON ``{"code", "msg"}`` with the
matching HTTP status. Served: AgentDispatchService CreateDispatch / ListDispatch / DeleteDispatch, RoomService
CreateRoom / ListRooms / DeleteRoom / ListParticipants / RemoveParticipant.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.protocol import agent_dispatch, models, room as room_pb

from ._core import AuthError, bearer, room_proto, verify_token

if TYPE_CHECKING:
    from ._core import ParticipantState
    from ._server import LiveKitDouble

STATUS = {"unauthenticated": 401, "permission_denied": 403, "not_found": 404, "bad_route": 404,
          "malformed": 400, "invalid_argument": 400, "already_exists": 409, "resource_exhausted": 413,
          "internal": 500, "unimplemented": 501}


class TwirpError(Exception):
    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg = code, msg


def setup(double: "LiveKitDouble", app: web.Application) -> "TwirpService":
    svc = TwirpService(double)
    app.router.add_route("*", "/twirp/livekit.{service}/{method}", svc.handle)
    return svc


Handler = Callable[[Message, dict[str, Any]], Awaitable[Message]]


class TwirpService:
    def __init__(self, double: "LiveKitDouble") -> None:
        self.double = double
        # (service, method) -> (request class, handler, needed grant(s), room field of the request or None)
        self.routes: dict[tuple[str, str], tuple[type[Message], Handler, tuple[str, ...], str | None]] = {
            ("AgentDispatchService", "CreateDispatch"): (agent_dispatch.CreateAgentDispatchRequest,
                                                         self.create_dispatch, ("roomAdmin",), "room"),
            ("AgentDispatchService", "ListDispatch"): (agent_dispatch.ListAgentDispatchRequest,
                                                       self.list_dispatch, ("roomAdmin",), "room"),
            ("AgentDispatchService", "DeleteDispatch"): (agent_dispatch.DeleteAgentDispatchRequest,
                                                         self.delete_dispatch, ("roomAdmin",), "room"),
            ("RoomService", "CreateRoom"): (room_pb.CreateRoomRequest, self.create_room, ("roomCreate",), None),
            ("RoomService", "ListRooms"): (room_pb.ListRoomsRequest, self.list_rooms, ("roomList",), None),
            ("RoomService", "DeleteRoom"): (room_pb.DeleteRoomRequest, self.delete_room, ("roomCreate",), None),
            ("RoomService", "ListParticipants"): (room_pb.ListParticipantsRequest, self.list_participants,
                                                  ("roomAdmin",), "room"),
            ("RoomService", "RemoveParticipant"): (room_pb.RoomParticipantIdentity, self.remove_participant,
                                                   ("roomAdmin",), "room"),
        }

    # ------------------------------------------------------------------------------------------- plumbing
    async def handle(self, request: web.Request) -> web.Response:
        service, method = request.match_info["service"], request.match_info["method"]
        as_json = request.content_type == "application/json"
        try:
            route = self.routes.get((service, method))
            if route is None:
                raise TwirpError("bad_route", f"the LiveKit server double does not implement livekit.{service}/"
                                              f"{method} (served: {', '.join(f'{s}/{m}' for s, m in self.routes)})")
            if request.method != "POST":
                raise TwirpError("bad_route", f"Twirp needs POST, got {request.method}")
            req_cls, handler, grants, room_field = route
            claims = self._auth(request)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise TwirpError("resource_exhausted", f"request body larger than {self.double.max_message_size} "
                                                       "bytes") from None
            req = self._decode(req_cls, body, as_json, request.content_type)
            self._check_grants(claims, grants, getattr(req, room_field) if room_field else None)
            resp = await handler(req, claims)
        except TwirpError as e:
            status = STATUS.get(e.code, 500)
            self.double.events.record("twirp_error", service=service, method=method, code=e.code, msg=e.msg,
                                      status=status)
            if status == 404 and e.code == "bad_route":
                self.double.events.record("http_404", method=request.method, path=request.path,
                                          remote=request.remote)
            return web.Response(status=status, text=json.dumps({"code": e.code, "msg": e.msg}),
                                content_type="application/json")
        self.double.events.record("twirp_call", service=service, method=method)
        if as_json:
            return web.Response(text=json_format.MessageToJson(resp), content_type="application/json")
        return web.Response(body=resp.SerializeToString(), content_type="application/protobuf")

    def _auth(self, request: web.Request) -> dict[str, Any]:
        token = bearer(request.headers)
        if not token:
            self.double.events.record("auth_rejected", path=request.path, reason="missing bearer token",
                                      remote=request.remote)
            raise TwirpError("unauthenticated", "missing Authorization: Bearer <token>")
        try:
            return verify_token(token, self.double.api_key, self.double.api_secret)
        except AuthError as e:
            self.double.events.record("auth_rejected", path=request.path, reason=str(e), remote=request.remote)
            raise TwirpError("unauthenticated", str(e)) from None

    @staticmethod
    def _check_grants(claims: dict[str, Any], grants: tuple[str, ...], room: str | None) -> None:
        video = claims.get("video") or {}
        missing = [g for g in grants if not video.get(g)]
        if missing:
            raise TwirpError("permission_denied", f"token lacks the video grant(s) {', '.join(missing)}")
        if room is not None and video.get("room") and video["room"] != room:
            raise TwirpError("permission_denied", f"token is for room {video['room']!r}, not {room!r}")

    @staticmethod
    def _decode(cls: type[Message], body: bytes, as_json: bool, content_type: str) -> Message:
        try:
            if as_json:
                return json_format.Parse(body or b"{}", cls())
            if content_type not in ("application/protobuf", "application/octet-stream", ""):
                raise TwirpError("bad_route", f"unsupported Content-Type {content_type!r} (use application/protobuf "
                                              "or application/json)")
            return cls.FromString(body)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError) as e:
            raise TwirpError("malformed", f"could not decode {cls.DESCRIPTOR.full_name}: {e}") from None

    def _room(self, name: str) -> Any:
        if not name:
            raise TwirpError("invalid_argument", "room name is required")
        room = self.double.rooms.get(name)
        if room is None:
            raise TwirpError("not_found", f"room {name!r} does not exist")
        return room

    # ------------------------------------------------------------------------------------------- AgentDispatchService
    async def create_dispatch(self, req: Any, claims: dict[str, Any]) -> Message:
        if not req.room:
            raise TwirpError("invalid_argument", "room is required")
        attrs = dict(req.attributes) if "attributes" in req.DESCRIPTOR.fields_by_name else {}
        d = self.double.agent.create_dispatch(req.room, req.agent_name, req.metadata, attributes=attrs)
        return d.to_proto()

    async def list_dispatch(self, req: Any, claims: dict[str, Any]) -> Message:
        if not req.room:
            raise TwirpError("invalid_argument", "room is required")
        out = agent_dispatch.ListAgentDispatchResponse()
        for d in self.double.agent.dispatches.values():
            if d.room == req.room and (not req.dispatch_id or d.id == req.dispatch_id):
                out.agent_dispatches.append(d.to_proto())
        return out

    async def delete_dispatch(self, req: Any, claims: dict[str, Any]) -> Message:
        d = self.double.agent.dispatches.get(req.dispatch_id)
        if d is None or (req.room and d.room != req.room):
            raise TwirpError("not_found", f"dispatch {req.dispatch_id!r} not found in room {req.room!r}")
        d = await self.double.agent.delete_dispatch(d.id)
        return d.to_proto()

    # ------------------------------------------------------------------------------------------- RoomService
    async def create_room(self, req: Any, claims: dict[str, Any]) -> Message:
        if not req.name:
            raise TwirpError("invalid_argument", "room name is required")
        kw: dict[str, Any] = {"metadata": req.metadata}
        if req.empty_timeout:
            kw["empty_timeout"] = req.empty_timeout
        if req.max_participants:
            kw["max_participants"] = req.max_participants
        agents = [json_format.MessageToDict(a) for a in req.agents]
        if agents:
            kw["agents"] = agents
        room = self.double.ensure_room(req.name, created_by="api", **kw)
        return room_proto(room)

    async def list_rooms(self, req: Any, claims: dict[str, Any]) -> Message:
        names = set(req.names)
        out = room_pb.ListRoomsResponse()
        for room in self.double.rooms.values():
            if not names or room.name in names:
                out.rooms.append(room_proto(room))
        return out

    async def delete_room(self, req: Any, claims: dict[str, Any]) -> Message:
        self._room(req.room)
        await self.double.delete_room(req.room, reason="DeleteRoom")
        return room_pb.DeleteRoomResponse()

    async def list_participants(self, req: Any, claims: dict[str, Any]) -> Message:
        room = self._room(req.room)
        out = room_pb.ListParticipantsResponse()
        for p in room.participants.values():
            out.participants.append(participant_info(p))
        return out

    async def remove_participant(self, req: Any, claims: dict[str, Any]) -> Message:
        room = self._room(req.room)
        p = room.participants.get(req.identity)
        if p is None:
            raise TwirpError("not_found", f"participant {req.identity!r} is not in room {req.room!r}")
        await self.double.remove_participant(room, p, reason="RemoveParticipant")
        return room_pb.RemoveParticipantResponse()


def participant_info(p: "ParticipantState") -> models.ParticipantInfo:
    info = models.ParticipantInfo(sid=p.sid, identity=p.identity, name=p.name, metadata=p.metadata,
                                  state=models.ParticipantInfo.ACTIVE, joined_at=int(p.joined_at),
                                  joined_at_ms=int(p.joined_at * 1000),
                                  kind=models.ParticipantInfo.AGENT if p.kind == "agent"
                                  else models.ParticipantInfo.STANDARD)
    info.attributes.update(p.attributes)
    return info
