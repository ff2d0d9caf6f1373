"""Signalling half of the LiveKit server double: ``/rtc`` (v0), ``/rtc/v1``, validate, ``/settings/regions``.

STATUS: done: v0/v1 signalling, WebRTC, resume, every fault and action, regions; tested with livekit 1.1.2/1.1.21/1.2.0.

The real ``livekit`` Rust SDK connects here over real WebRTC (aiortc answers/offers, see ``_webrtc``):

- ``/rtc/v1?join_request=<base64url WrappedJoinRequest>``: single peer connection; the join request carries the
  publisher offer, which is answered right after the JoinResponse; the server opens its own ``_reliable`` and
  ``_lossy`` channels on that PC for downstream data.
- ``/rtc?sdk=..&protocol=..`` (v0): two PCs. With ``subscriber_primary`` (default) the server offers the subscriber
  PC right after the JoinResponse and sends downstream data on it; otherwise (``signal.subscriber_primary = False``)
  the client negotiates its publisher PC and downstream data uses the client's own channels on it, as
  livekit-server does (no subscriber PC is offered: media forwarding is not implemented).
- Resume (``reconnect=1&sid=`` / ``JoinRequest.reconnect``): ReconnectResponse, then a ParticipantUpdate re-announcing
  the room (the client synthesizes disconnects for participants that are not re-announced); the ICE-restart offer
  goes through the aiortc shim.

Every participant is a :class:`SignalParticipant` (``ParticipantState.session``), which survives signal reconnects.
Faults are listed in :data:`FAULTS`; actions are methods of :class:`SignalService` (run them on the double's loop,
e.g. ``double.call(double.signal.send_leave, "alice", action="RESUME")``).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import inspect
import json
import logging
import socket
import struct
import time
from typing import Any, Awaitable, Callable

from aiohttp import WSMsgType, web
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from . import _webrtc
from ._core import AuthError, ParticipantState, RoomState, bearer, new_sid, verify_token

log = logging.getLogger("lk_probe.testing.signal")

SERVER_VERSION = "1.9.0-lkprobe"
SERVER_PROTOCOL = 16
REGION = "lkp-local"
NODE_ID = "ND_lkprobe0001"

FAULTS: dict[str, str] = {
    "signal_upgrade_delay": "hold the /rtc or /rtc/v1 upgrade for `delay` seconds, then go on (the client gives up "
                            "after its 5 s connect timeout and retries)",
    "signal_upgrade_hang": "never answer the signal upgrade (held until the client goes away or the double stops)",
    "signal_upgrade_status": "answer the signal upgrade with HTTP `status` (default 503); optional `path` 'v1' or 'v0' "
                             "limits it to one path (404 on v1 makes the client fall back to v0)",
    "validate_status": "answer /rtc[/v1]/validate with HTTP `status` (default 500)",
    "validate_hang": "never answer /rtc[/v1]/validate",
    "join_response_delay": "send the JoinResponse `delay` seconds after the upgrade",
    "join_response_never": "upgrade the signal socket but never send a JoinResponse",
    "ice_never": "ICE never completes for this join: our candidates are stripped from the SDP and the client's "
                 "trickled candidates are ignored (one firing = one join attempt)",
    "ice_candidates_hidden": "our candidates are stripped from the SDP but the client's are used: the client learns "
                             "our address only from our connectivity checks (a peer-reflexive remote candidate, as "
                             "behind a NAT)",
    "drop_pongs": "stop answering pings on the participant's signal connection (taken at its next ping; one "
                  "firing = one connection goes silent), so the client's ping timeout fires and it resumes",
    "refuse_resume": "answer a resume with Leave{STATE_MISMATCH, RECONNECT} and forget the participant, like a real "
                     "server that lost it",
    "refuse_rejoin": "refuse a full rejoin (fresh join of an identity that was in the room before) with HTTP "
                     "`status` (default 503); count=None means the client never recovers",
    "region_hang": "never answer GET /settings/regions",
}

LEAVE_ACTIONS = {"DISCONNECT": rtc.LeaveRequest.DISCONNECT, "RESUME": rtc.LeaveRequest.RESUME,
                 "RECONNECT": rtc.LeaveRequest.RECONNECT}


def setup(double: Any, app: web.Application) -> "SignalService":
    """Add the signalling routes to ``app``, register the faults, set ``double.signal``."""
    svc = SignalService(double)
    app.router.add_get("/rtc", svc.handle_rtc_v0)
    app.router.add_get("/rtc/v1", svc.handle_rtc_v1)
    app.router.add_get("/rtc/validate", svc.handle_validate)
    app.router.add_get("/rtc/v1/validate", svc.handle_validate)
    app.router.add_get("/settings/regions", svc.handle_regions)
    double.register_faults(FAULTS)
    double.signal = svc
    if hasattr(double, "add_stop_hook"):
        double.add_stop_hook(svc.close)
    return svc


class SignalError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _b64decode(s: str) -> bytes:
    s = s.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)


def decode_join_request(raw: str) -> rtc.JoinRequest:
    """``join_request`` = base64url(WrappedJoinRequest{compression, join_request}); raise SignalError(400)."""
    try:
        data = _b64decode(raw)
    except Exception:
        raise SignalError(400, "malformed join_request: not base64") from None
    try:
        wrapped = rtc.WrappedJoinRequest()
        wrapped.ParseFromString(data)
        inner = wrapped.join_request
        if wrapped.compression == rtc.WrappedJoinRequest.GZIP:
            inner = gzip.decompress(inner)
        jr = rtc.JoinRequest()
        jr.ParseFromString(inner)
    except (DecodeError, OSError, EOFError, ValueError) as e:
        raise SignalError(400, f"malformed join_request: {e.__class__.__name__}: {e}") from None
    return jr


_REASON_WORDS = {"removed": "PARTICIPANT_REMOVED", "room deleted": "ROOM_DELETED", "duplicate": "DUPLICATE_IDENTITY",
                 "shutdown": "SERVER_SHUTDOWN", "migration": "MIGRATION"}


def reason_name(reason: str | int, *, strict: bool = False) -> str:
    """A ``DisconnectReason`` name from a name, a number or (unless ``strict``) a free-form phrase."""
    if isinstance(reason, int):
        return models.DisconnectReason.Name(reason)
    name = reason.strip().upper().replace(" ", "_")
    if name in models.DisconnectReason.keys():
        return name
    if strict:
        raise ValueError(f"unknown disconnect reason {reason!r}; one of {', '.join(models.DisconnectReason.keys())}")
    for word, mapped in _REASON_WORDS.items():
        if word in reason.lower():
            return mapped
    return "UNKNOWN_REASON"


def _sdk_name(v: int) -> str:
    try:
        return models.ClientInfo.SDK.Name(v)
    except ValueError:
        return str(v)


# --------------------------------------------------------------------------------------------------------
# one signal WebSocket


class _Conn:
    def __init__(self, svc: "SignalService", ws: web.WebSocketResponse, transport: Any, path: str,
                 identity: str) -> None:
        self.svc = svc
        self.ws = ws
        self.transport = transport
        self.path = path
        self.identity = identity
        self.participant: SignalParticipant | None = None
        self.drop_pongs = False
        self.close_reason: str | None = None
        self._lock = asyncio.Lock()

    @property
    def open(self) -> bool:
        return not self.ws.closed and self.close_reason is None

    async def send(self, resp: rtc.SignalResponse) -> bool:
        if not self.open:
            return False
        data = resp.SerializeToString()
        async with self._lock:
            try:
                await self.ws.send_bytes(data)
                return True
            except (ConnectionError, RuntimeError) as e:
                log.debug("send to %s failed: %s", self.identity, e)
                return False

    def abort(self, reason: str = "aborted") -> None:
        """TCP abort (RST): no close frame, no FIN."""
        if self.close_reason is None:
            self.close_reason = reason
        t = self.transport
        if t is None:
            return
        try:
            sock = t.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        t.abort()

    async def close(self, reason: str = "server closed") -> None:
        if self.close_reason is None:
            self.close_reason = reason
        if not self.ws.closed:
            try:
                await asyncio.wait_for(self.ws.close(), 2)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                self.abort(reason)


# --------------------------------------------------------------------------------------------------------
# participant (survives signal reconnects)


class SignalParticipant:
    """A participant as the signalling layer sees it; ``ParticipantState.session`` points here."""

    def __init__(self, svc: "SignalService", room: RoomState, identity: str, sid: str, claims: dict[str, Any],
                 *, single_pc: bool, subscriber_primary: bool, client: dict[str, Any]) -> None:
        self.svc = svc
        self.room = room
        self.identity = identity
        self.sid = sid
        self.claims = claims
        self.single_pc = single_pc
        self.subscriber_primary = subscriber_primary
        self.client = client
        self.conn: _Conn | None = None
        self.pub: _webrtc.ServerPeer | None = None  # the client's publisher PC (client offers)
        self.sub: _webrtc.ServerPeer | None = None  # the client's subscriber PC (server offers)
        self.pending_trickles: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
        self.ice_never = False
        self.hide_candidates = False
        self.pending_data: list[tuple[str, bytes, str, str | None]] = []  # (label, packet, sender, kind)
        self.last_seq = 0
        self.closed = False
        self.joined_at = time.time()
        video = claims.get("video") or {}
        self.permission = models.ParticipantPermission(
            can_subscribe=video.get("canSubscribe", True), can_publish=video.get("canPublish", True),
            can_publish_data=video.get("canPublishData", True), hidden=bool(video.get("hidden", False)),
            agent=bool(video.get("agent", False)), can_update_metadata=bool(video.get("canUpdateOwnMetadata", False)))
        self.kind = claims.get("kind") or ("agent" if video.get("agent") else "standard")
        self.state = ParticipantState(identity=identity, sid=sid, name=claims.get("name", ""),
                                      metadata=claims.get("metadata", ""), kind=self.kind,
                                      attributes=dict(claims.get("attributes") or {}), session=self)
        self._departure: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<SignalParticipant {self.identity} {self.sid} room={self.room.name}>"

    async def leave(self, action: str = "DISCONNECT", reason: str = "UNKNOWN_REASON") -> bool:
        """Send a LeaveRequest to this participant (used by Twirp RemoveParticipant etc.)."""
        return await self.svc.leave_participant(self, action=action, reason=reason)

    def info(self, state: int = models.ParticipantInfo.ACTIVE) -> models.ParticipantInfo:
        kinds = {"agent": models.ParticipantInfo.AGENT, "sip": models.ParticipantInfo.SIP,
                 "egress": models.ParticipantInfo.EGRESS, "ingress": models.ParticipantInfo.INGRESS}
        return models.ParticipantInfo(
            sid=self.sid, identity=self.identity, state=state, name=self.state.name, metadata=self.state.metadata,
            joined_at=int(self.joined_at), joined_at_ms=int(self.joined_at * 1000), permission=self.permission,
            region=getattr(self.svc.double, "region", REGION),
            kind=kinds.get(self.kind, models.ParticipantInfo.STANDARD),
            attributes=self.state.attributes, client_protocol=int(self.client.get("client_protocol") or 0))

    def downstream(self, label: str):  # type: ignore[no-untyped-def]
        """The channel for data *to* this participant: like livekit-server, on the primary PC (v1: the single PC,
        with the server's own channels; v0 subscriber-primary: the subscriber PC; v0 publisher-primary: the
        client's own channels on its publisher PC)."""
        peer = self.sub if (not self.single_pc and self.subscriber_primary) else self.pub
        return peer.downstream(label) if peer is not None else None

    def peers(self) -> list[_webrtc.ServerPeer]:
        return [p for p in (self.pub, self.sub) if p is not None]


# --------------------------------------------------------------------------------------------------------
# the service


class SignalService:
    """Signalling + WebRTC of the double. Settings are plain attributes, changeable while running."""

    def __init__(self, double: Any) -> None:
        self.double = double
        self.events = double.events
        self.faults = double.faults
        self.ping_interval = 5  # seconds, sent in the JoinResponse (real server: 5 / 15)
        self.ping_timeout = 15
        self.subscriber_primary = True  # v0 only; v1 is single-PC, subscriber_primary=False
        self.departure_timeout = 20.0  # a participant whose signal dropped without Leave is forgotten after this
        self.hang_max = 120.0  # upper bound of every "hang" fault
        self.max_msg_size = int(getattr(double, "max_message_size", 1 << 20))  # larger: closed with 1009
        self.participants: dict[str, SignalParticipant] = {}  # by sid
        self._joined_before: set[tuple[str, str]] = set()  # (room, identity)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._conns: set[_Conn] = set()
        self._closing = asyncio.Event()
        self.closed = False
        self.peers_created: list[_webrtc.ServerPeer] = []  # every aiortc peer, for leak checks

    # ---------------------------------------------------------------- helpers
    def _record(self, kind: str, **data: Any) -> None:
        self.events.record(kind, **data)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)  # keep a reference (gotcha 8)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.warning("signal task failed: %r", t.exception(), exc_info=t.exception())

    def _take(self, name: str, identity: str | None, where: Callable[[Any], bool] | None = None) -> Any:
        return self.faults.take(name, identity, where=where)

    @staticmethod
    def _client_gone(request: web.Request) -> bool:
        t = request.transport
        return t is None or t.is_closing()

    async def _hold(self, request: web.Request | None, seconds: float) -> bool:
        """Wait up to ``seconds`` (bounded by hang_max); return False early if the client went away or we stop."""
        deadline = time.monotonic() + min(seconds, self.hang_max)
        while not self._closing.is_set():
            if request is not None and self._client_gone(request):
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            try:
                await asyncio.wait_for(self._closing.wait(), min(left, 0.1))
            except asyncio.TimeoutError:
                pass
        return False

    def _allow_non_loopback(self) -> None:
        _webrtc.POLICY.allow_non_loopback = bool(getattr(self.double, "allow_non_loopback", False))

    def _server_info(self) -> models.ServerInfo:
        d = self.double
        return models.ServerInfo(edition=models.ServerInfo.Standard, version=getattr(d, "version", SERVER_VERSION),
                                 protocol=int(getattr(d, "protocol", SERVER_PROTOCOL)),
                                 region=getattr(d, "region", REGION), node_id=getattr(d, "node_id", NODE_ID))

    def _room_info(self, room: RoomState) -> models.Room:
        return models.Room(sid=room.sid, name=room.name, empty_timeout=room.empty_timeout,
                           max_participants=room.max_participants, creation_time=int(room.created_at),
                           creation_time_ms=int(room.created_at * 1000), metadata=room.metadata,
                           num_participants=len(room.participants))

    def _others(self, p: SignalParticipant) -> list[SignalParticipant]:
        out = []
        for st in list(p.room.participants.values()):
            q = st.session
            if isinstance(q, SignalParticipant) and q is not p and not q.closed:
                out.append(q)
        return out

    def find(self, identity: str, room: str | None = None) -> SignalParticipant | None:
        """The live participant with this identity (in ``room`` if given); the newest one wins."""
        found = [p for p in self.participants.values()
                 if p.identity == identity and not p.closed and (room is None or p.room.name == room)]
        return max(found, key=lambda p: p.joined_at) if found else None

    async def _ensure_room(self, name: str, room_config: Any) -> RoomState:
        r = self.double.ensure_room(name, created_by="join", room_config=room_config)
        if inspect.isawaitable(r):
            r = await r
        return r

    # ---------------------------------------------------------------- HTTP endpoints
    async def handle_rtc_v0(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(self._handle_rtc(request, "v0"))

    async def handle_rtc_v1(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(self._handle_rtc(request, "v1"))

    async def _guarded(self, coro: Awaitable[web.StreamResponse]) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            return await coro
        finally:
            if task is not None:
                self._handlers.discard(task)

    def _reject(self, status: int, reason: str, **data: Any) -> web.Response:
        self._record("signal_rejected", status=status, reason=reason, **data)
        return web.Response(status=status, text=reason)

    def _auth(self, request: web.Request) -> dict[str, Any]:
        token = bearer(request.headers, request.query)
        if not token:
            raise SignalError(401, "no access token (Authorization: Bearer)")
        try:
            claims = verify_token(token, self.double.api_key, self.double.api_secret)
        except AuthError as e:
            raise SignalError(401, str(e)) from None
        video = claims.get("video") or {}
        if not video.get("roomJoin"):
            raise SignalError(401, "permissions denied: token has no roomJoin grant")
        if not video.get("room"):
            raise SignalError(401, "permissions denied: token names no room")
        if not claims.get("sub"):
            raise SignalError(401, "invalid token: no identity")
        return claims

    async def _handle_rtc(self, request: web.Request, path: str) -> web.StreamResponse:
        self._allow_non_loopback()
        # 1. parse the request
        try:
            if path == "v1":
                raw = request.query.get("join_request")
                if not raw:
                    raise SignalError(400, "missing join_request")
                jr = decode_join_request(raw)
                client = {"sdk": _sdk_name(jr.client_info.sdk), "protocol": jr.client_info.protocol,
                          "version": jr.client_info.version, "client_protocol": jr.client_info.client_protocol,
                          "auto_subscribe": jr.connection_settings.auto_subscribe}
                reconnect = bool(jr.reconnect)
                sid = jr.participant_sid
                offer_sdp = jr.publisher_offer.sdp if jr.HasField("publisher_offer") else ""
                offer_id = jr.publisher_offer.id if jr.HasField("publisher_offer") else 0
            else:
                q = request.query
                client = {"sdk": q.get("sdk", ""), "protocol": int(q.get("protocol") or 0),
                          "version": q.get("version", ""), "client_protocol": int(q.get("client_protocol") or 0),
                          "auto_subscribe": q.get("auto_subscribe", "1") not in ("0", "false")}
                reconnect = q.get("reconnect") in ("1", "true")
                sid = q.get("sid", "")
                offer_sdp, offer_id = "", 0
            claims = self._auth(request)
        except SignalError as e:
            return self._reject(e.status, e.reason, path=request.path)
        except ValueError as e:
            return self._reject(400, f"malformed query: {e}", path=request.path)
        identity = claims["sub"]
        room_name = claims["video"]["room"]
        self._record("signal_request", path=request.path, reconnect=reconnect, sid=sid, sdk=client["sdk"],
                     protocol=client["protocol"], identity=identity, room=room_name,
                     publisher_offer=bool(offer_sdp))

        # 2. upgrade faults
        f = self._take("signal_upgrade_status", identity, where=lambda f: f.params.get("path") in (None, path))
        if f is not None:
            status = int(f.params.get("status", 503))
            return self._reject(status, f"lk_probe fault: signal_upgrade_status {status}", path=request.path,
                                identity=identity)
        if self._take("signal_upgrade_hang", identity) is not None:
            await self._hold(request, self.hang_max)
            self._record("signal_closed", identity=identity, sid=sid, reason="upgrade held (signal_upgrade_hang)")
            return web.Response(status=503, text="lk_probe fault: signal_upgrade_hang")
        f = self._take("signal_upgrade_delay", identity)
        if f is not None:
            if not await self._hold(request, float(f.params.get("delay", 8.0))):
                self._record("signal_closed", identity=identity, sid=sid,
                             reason="client gone during signal_upgrade_delay")
                return web.Response(status=503, text="lk_probe fault: signal_upgrade_delay")
        if not reconnect and (room_name, identity) in self._joined_before:
            f = self._take("refuse_rejoin", identity)
            if f is not None:
                status = int(f.params.get("status", 503))
                return self._reject(status, f"lk_probe fault: refuse_rejoin {status}", path=request.path,
                                    identity=identity)

        # 3. upgrade
        transport = request.transport
        ws = web.WebSocketResponse(max_msg_size=self.max_msg_size, autoping=True)
        if not ws.can_prepare(request).ok:
            return self._reject(400, "not a WebSocket upgrade request", path=request.path, identity=identity)
        try:
            await ws.prepare(request)
        except (ConnectionError, RuntimeError) as e:
            self._record("signal_closed", identity=identity, sid=sid, reason=f"upgrade failed: {e}")
            return ws
        conn = _Conn(self, ws, transport, path, identity)
        self._conns.add(conn)
        try:
            if reconnect:
                ok = await self._resume(conn, claims, sid, offer_sdp, offer_id)
            else:
                ok = await self._join(conn, claims, client, path, offer_sdp, offer_id)
            if ok:
                await self._read_loop(conn)
        finally:
            self._conns.discard(conn)
            await self._conn_ended(conn)
        return ws

    async def handle_validate(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            identity = None
            try:
                claims = self._auth(request)
                identity = claims["sub"]
                if request.path.startswith("/rtc/v1") and request.query.get("join_request"):
                    decode_join_request(request.query["join_request"])
                error = None
            except SignalError as e:
                error = e
            # faults first: a hanging / failing server answers nothing useful, token or not (livekit 1.1.2
            # sends validate without a token)
            if self._take("validate_hang", identity) is not None:
                await self._hold(request, self.hang_max)
                self._record("validate", path=request.path, status=None, identity=identity, reason="held")
                return web.Response(status=503, text="lk_probe fault: validate_hang")
            f = self._take("validate_status", identity)
            if f is not None:
                status = int(f.params.get("status", 500))
                reason = f"lk_probe fault: validate_status {status}"
                self._record("validate", path=request.path, status=status, identity=identity, reason=reason)
                return web.Response(status=status, text=reason)
            if error is not None:
                self._record("validate", path=request.path, status=error.status, identity=identity,
                             reason=error.reason)
                return web.Response(status=error.status, text=error.reason)
            self._record("validate", path=request.path, status=200, identity=identity, reason="success")
            return web.Response(status=200, text="success")
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def handle_regions(self, request: web.Request) -> web.StreamResponse:
        """``GET /settings/regions``: ``{"regions": [{"region", "url", "distance"}]}`` (rust-sdks RegionUrlResponse)."""
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            token = bearer(request.headers, request.query)
            identity = None
            try:
                if not token:
                    raise AuthError("no access token")
                identity = verify_token(token, self.double.api_key, self.double.api_secret).get("sub")
            except AuthError as e:
                self._record("region_fetch", status=401, identity=identity, reason=str(e))
                return web.Response(status=401, text=str(e))
            if self._take("region_hang", identity) is not None:
                await self._hold(request, self.hang_max)
                self._record("region_fetch", status=None, identity=identity, reason="held")
                return web.Response(status=503, text="lk_probe fault: region_hang")
            scheme = "https" if request.secure else "http"
            region = getattr(self.double, "region", REGION)
            body = {"regions": [{"region": region, "url": f"{scheme}://{request.host}", "distance": "0"}]}
            self._record("region_fetch", status=200, identity=identity, reason="ok")
            return web.json_response(body)
        finally:
            if task is not None:
                self._handlers.discard(task)

    # ---------------------------------------------------------------- join / resume
    async def _join(self, conn: _Conn, claims: dict[str, Any], client: dict[str, Any], path: str,
                    offer_sdp: str, offer_id: int) -> bool:
        identity = conn.identity
        f = self._take("join_response_never", identity)
        if f is not None:
            await self._wait_closed(conn, self.hang_max)
            conn.close_reason = conn.close_reason or "no JoinResponse (join_response_never)"
            return False
        f = self._take("join_response_delay", identity)
        if f is not None:
            if not await self._wait_closed(conn, float(f.params.get("delay", 3.0))):
                conn.close_reason = conn.close_reason or "client gone during join_response_delay"
                return False

        room = await self._ensure_room(claims["video"]["room"], claims.get("roomConfig"))
        old = room.participants.get(identity)
        if old is not None:
            old_p = old.session
            if isinstance(old_p, SignalParticipant):
                await self._send_leave(old_p, "DISCONNECT", "DUPLICATE_IDENTITY")
                await self._remove(old_p, "DUPLICATE_IDENTITY")
            else:
                room.participants.pop(identity, None)

        single_pc = path == "v1"
        p = SignalParticipant(self, room, identity, new_sid("PA_"), claims, single_pc=single_pc,
                              subscriber_primary=(not single_pc) and bool(self.subscriber_primary), client=client)
        p.ice_never = self._take("ice_never", identity) is not None
        p.hide_candidates = self._take("ice_candidates_hidden", identity) is not None
        p.conn = conn
        conn.participant = p
        others = self._others(p)
        jr = rtc.JoinResponse(
            room=self._room_info(room), participant=p.info(models.ParticipantInfo.JOINED),
            other_participants=[q.info() for q in others], server_version=SERVER_VERSION,
            subscriber_primary=p.subscriber_primary, server_region=getattr(self.double, "region", REGION),
            ping_timeout=int(self.ping_timeout), ping_interval=int(self.ping_interval), server_info=self._server_info(), fast_publish=False)
        self.participants[p.sid] = p
        room.participants[identity] = p.state
        self._joined_before.add((room.name, identity))
        await conn.send(rtc.SignalResponse(join=jr))
        self._record("join_sent", identity=identity, sid=p.sid, room=room.name,
                     subscriber_primary=p.subscriber_primary, single_pc=single_pc, ice_never=p.ice_never)
        self._record("participant_joined", identity=identity, sid=p.sid, room=room.name)
        await self._broadcast_update(p, models.ParticipantInfo.ACTIVE)

        try:
            if single_pc and offer_sdp:
                await self._answer_offer(p, offer_sdp, offer_id)
            elif not single_pc and p.subscriber_primary:
                await self._offer_subscriber(p)
        except _webrtc.PeerClosed:
            pass  # removed (duplicate identity, leave, room deleted) while negotiating; the socket is closing
        return True

    async def _resume(self, conn: _Conn, claims: dict[str, Any], sid: str, offer_sdp: str, offer_id: int) -> bool:
        identity = conn.identity
        p = self.participants.get(sid)
        refused = self._take("refuse_resume", identity)
        if p is None or p.closed or p.identity != identity or refused is not None:
            why = "refuse_resume fault" if refused is not None else "participant unknown"
            leave = rtc.LeaveRequest(can_reconnect=True, reason=models.STATE_MISMATCH,
                                     action=rtc.LeaveRequest.RECONNECT)
            sent = await conn.send(rtc.SignalResponse(leave=leave))
            self._record("leave_sent", identity=identity, sid=sid, action="RECONNECT", reason="STATE_MISMATCH",
                         sent=sent, during="resume")
            if p is not None and not p.closed:
                await self._remove(p, "STATE_MISMATCH")
            await conn.close(f"resume refused ({why})")
            return False
        old = p.conn
        p.conn = conn
        conn.participant = p
        if p._departure is not None:
            p._departure.cancel()
            p._departure = None
        if old is not None and old is not conn and old.open:
            old.abort("replaced by resume")
        await conn.send(rtc.SignalResponse(reconnect=rtc.ReconnectResponse(
            server_info=self._server_info(), last_message_seq=p.last_seq)))
        self._record("reconnect_response", identity=identity, sid=p.sid, room=p.room.name, path=conn.path)
        others = self._others(p)
        if others:
            await conn.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[q.info() for q in others])))
        if offer_sdp:
            try:
                await self._answer_offer(p, offer_sdp, offer_id)
            except _webrtc.PeerClosed:
                pass
        return True

    async def _wait_closed(self, conn: _Conn, seconds: float) -> bool:
        """Read (and ignore) messages for ``seconds``; return False if the socket closed or we stop."""
        deadline = time.monotonic() + min(seconds, self.hang_max)
        while not self._closing.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            try:
                msg = await asyncio.wait_for(conn.ws.receive(), min(left, 0.5))
            except asyncio.TimeoutError:
                continue
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return False
        return False

    # ---------------------------------------------------------------- signal messages
    async def _read_loop(self, conn: _Conn) -> None:
        async for msg in conn.ws:
            if msg.type == WSMsgType.BINARY:
                req = rtc.SignalRequest()
                try:
                    req.ParseFromString(msg.data)
                except DecodeError as e:
                    self._record("signal_bad_message", identity=conn.identity, reason=f"undecodable SignalRequest: {e}",
                                 size=len(msg.data))
                    continue
                try:
                    await self._on_request(conn, req)
                except _webrtc.PeerClosed:
                    pass  # the participant went away while its negotiation waited
                except Exception as e:  # a handler bug must not kill the participant's signal
                    log.exception("signal handler failed")
                    self._record("signal_bad_message", identity=conn.identity,
                                 reason=f"{req.WhichOneof('message')} failed: {e!r}", size=len(msg.data))
            elif msg.type == WSMsgType.TEXT:
                self._record("signal_bad_message", identity=conn.identity,
                             reason="JSON (text) signalling is not supported", size=len(msg.data))
            elif msg.type == WSMsgType.ERROR:
                exc = conn.ws.exception()
                reason = f"{exc}" if exc is not None else "websocket error"
                if conn.ws.close_code == 1009 or "exceeds limit" in reason:
                    self._record("signal_bad_message", identity=conn.identity, reason=f"message too big: {reason}",
                                 size=None)
                conn.close_reason = conn.close_reason or reason
                break
        if conn.close_reason is None:
            conn.close_reason = "client closed" if conn.ws.close_code in (None, 1000, 1001, 1005) \
                else f"closed {conn.ws.close_code}"

    async def _on_request(self, conn: _Conn, req: rtc.SignalRequest) -> None:
        which = req.WhichOneof("message")
        p = conn.participant
        self._record("signal_msg", identity=conn.identity, sid=p.sid if p else None, which=which)
        if p is None or p.conn is not conn:
            return  # a stale socket (replaced by a resume)
        if which in ("ping_req", "ping") and not conn.drop_pongs:
            # taken at most once per connection, sticky from then on: the live connection goes silent
            conn.drop_pongs = self._take("drop_pongs", conn.identity) is not None
        if which == "ping_req":
            if not conn.drop_pongs:
                await conn.send(rtc.SignalResponse(pong_resp=rtc.Pong(
                    last_ping_timestamp=req.ping_req.timestamp, timestamp=int(time.time() * 1000))))
        elif which == "ping":
            if not conn.drop_pongs:
                await conn.send(rtc.SignalResponse(pong=req.ping))
        elif which == "offer":
            await self._answer_offer(p, req.offer.sdp, req.offer.id)
        elif which == "answer":
            if p.sub is not None:
                await p.sub.set_answer(req.answer.sdp)
        elif which == "trickle":
            await self._trickle(p, req.trickle)
        elif which == "leave":
            conn.close_reason = "client leave"
            await self._remove(p, models.DisconnectReason.Name(req.leave.reason) if req.leave.reason else
                               "CLIENT_INITIATED")
            await conn.close("client leave")
        elif which == "add_track":
            a = req.add_track
            ti = models.TrackInfo(sid=new_sid("TR_"), type=a.type, name=a.name, muted=a.muted, width=a.width,
                                  height=a.height, source=a.source, stereo=a.stereo)
            await conn.send(rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=a.cid, track=ti)))
        elif which == "simulate":
            await self._simulate(p, req.simulate)

    async def _simulate(self, p: SignalParticipant, s: rtc.SimulateScenario) -> None:
        kind = s.WhichOneof("scenario")
        if kind in ("node_failure", "migration"):
            await self.lose_node(p.identity, room=p.room.name)
        elif kind == "server_leave":
            await self.leave_participant(p, action="DISCONNECT", reason="SERVER_SHUTDOWN")
        elif kind == "leave_request_full_reconnect":
            await self.leave_participant(p, action="RECONNECT", reason="CLIENT_INITIATED")

    async def _trickle(self, p: SignalParticipant, t: rtc.TrickleRequest) -> None:
        try:
            init = _webrtc.parse_candidate_init(t.candidateInit)
        except ValueError as e:
            self._record("signal_bad_message", identity=p.identity, reason=f"bad candidateInit: {e}", size=None)
            return
        target = int(t.target)
        peer = p.pub if target == rtc.PUBLISHER else p.sub
        if p.single_pc:
            peer = p.pub
        if p.ice_never:
            result = "ignored"
        elif peer is None:
            p.pending_trickles.setdefault(target, []).append(init)
            result = "buffered"
        else:
            result = await peer.add_candidate(init)
        self._record("trickle", identity=p.identity, target=target, result=result,
                     candidate=init.get("candidate", ""))

    # ---------------------------------------------------------------- peers
    def _new_peer(self, p: SignalParticipant, role: str) -> _webrtc.ServerPeer:
        name = f"{p.sid}/{role}"

        def on_state(state: str) -> None:
            self._record("pc_state", identity=p.identity, sid=p.sid, pc=name, role=role, state=state)

        def on_message(label: str, data: bytes) -> None:
            self._relay(p, label, data)

        def on_restart(old: str, new: str) -> None:
            self._record("ice_restart", identity=p.identity, sid=p.sid, pc=name, old=old, new=new)

        def on_open(label: str) -> None:
            if p.pending_data and not p.closed:
                self._flush_data(p)

        peer = _webrtc.ServerPeer(name=name, role=role, on_state=on_state, on_message=on_message,
                                  on_ice_restart=on_restart, on_channel_open=on_open,
                                  strip_local_candidates=p.ice_never or p.hide_candidates,
                                  ignore_remote_candidates=p.ice_never)
        self.peers_created.append(peer)
        target = rtc.PUBLISHER if role == "publisher" else rtc.SUBSCRIBER
        for init in p.pending_trickles.pop(target, []):
            peer._pending.append(init)  # applied once the remote description is set
        return peer

    async def _answer_offer(self, p: SignalParticipant, sdp: str, offer_id: int) -> None:
        if p.closed:
            return
        if p.pub is None:
            p.pub = self._new_peer(p, "publisher")
        answer = await p.pub.answer(sdp, open_channels=p.single_pc)
        if p.closed or p.conn is None:
            return
        await p.conn.send(rtc.SignalResponse(answer=rtc.SessionDescription(type="answer", sdp=answer, id=offer_id)))
        self._record("answer_sent", identity=p.identity, sid=p.sid, pc=p.pub.name)

    async def _offer_subscriber(self, p: SignalParticipant) -> None:
        if p.sub is not None or p.closed:
            return
        p.sub = self._new_peer(p, "subscriber")
        sdp = await p.sub.offer()
        if p.closed or p.conn is None:
            return
        await p.conn.send(rtc.SignalResponse(offer=rtc.SessionDescription(type="offer", sdp=sdp)))
        self._record("offer_sent", identity=p.identity, sid=p.sid, pc=p.sub.name)

    # ---------------------------------------------------------------- data relay
    def _relay(self, p: SignalParticipant, label: str, data: bytes) -> None:
        pkt = models.DataPacket()
        try:
            pkt.ParseFromString(data)
            parsed = True
        except DecodeError:
            parsed = False
        dest: set[str] = set()
        if parsed:
            if label == "_reliable" and pkt.sequence:
                p.last_seq = max(p.last_seq, pkt.sequence)
            pkt.participant_identity = p.identity
            pkt.participant_sid = p.sid
            if pkt.HasField("user"):
                pkt.user.participant_identity = p.identity
                pkt.user.participant_sid = p.sid
                dest.update(pkt.user.destination_identities)
            dest.update(pkt.destination_identities)
            out = pkt.SerializeToString()
        else:
            out = data
        what = pkt.WhichOneof("value") if parsed else None
        for q in self._others(p):
            if dest and q.identity not in dest:
                continue
            self._deliver(q, label, out, sender=p.identity, packet=what)

    def _deliver(self, q: SignalParticipant, label: str, out: bytes, *, sender: str, packet: str | None) -> None:
        ch = q.downstream(label)
        if ch is None:
            if len(q.pending_data) < 256:  # the downstream channel opens a moment after the PC connects
                q.pending_data.append((label, out, sender, packet))
                self._record("data_queued", sender=sender, to=q.identity, label=label, size=len(out))
            else:
                self._record("data_dropped", sender=sender, to=q.identity, label=label, size=len(out),
                             reason="no open downstream channel, queue full")
            return
        try:
            ch.send(out)
        except Exception as e:  # channel closing under us
            self._record("data_dropped", sender=sender, to=q.identity, label=label, size=len(out), reason=repr(e))
            return
        self._record("data_relayed", sender=sender, to=q.identity, label=label, size=len(out), packet=packet)

    def _flush_data(self, q: SignalParticipant) -> None:
        pending, q.pending_data = q.pending_data, []
        for label, out, sender, packet in pending:
            if q.downstream(label) is None:
                q.pending_data.append((label, out, sender, packet))
            else:
                self._deliver(q, label, out, sender=sender, packet=packet)

    # ---------------------------------------------------------------- leave / removal
    async def _broadcast_update(self, p: SignalParticipant, state: int) -> None:
        upd = rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[p.info(state)]))
        for q in self._others(p):
            if q.conn is not None:
                await q.conn.send(upd)

    async def _send_leave(self, p: SignalParticipant, action: str, reason: str) -> bool:
        act = LEAVE_ACTIONS[action]
        rsn = models.DisconnectReason.Value(reason)
        leave = rtc.LeaveRequest(can_reconnect=act != rtc.LeaveRequest.DISCONNECT, reason=rsn, action=act)
        sent = bool(p.conn is not None and await p.conn.send(rtc.SignalResponse(leave=leave)))
        self._record("leave_sent", identity=p.identity, sid=p.sid, action=action, reason=reason, sent=sent)
        return sent

    async def _remove(self, p: SignalParticipant, reason: str, *, notify: bool = True) -> None:
        if p.closed:
            return
        p.closed = True
        if p._departure is not None:
            p._departure.cancel()
            p._departure = None
        if p.room.participants.get(p.identity) is p.state:
            del p.room.participants[p.identity]
        self.participants.pop(p.sid, None)
        self._record("participant_left", identity=p.identity, sid=p.sid, room=p.room.name, reason=reason)
        if notify:
            await self._broadcast_update(p, models.ParticipantInfo.DISCONNECTED)
        for peer in p.peers():
            await peer.close()

    async def _conn_ended(self, conn: _Conn) -> None:
        p = conn.participant
        reason = conn.close_reason or "closed"
        self._record("signal_closed", identity=conn.identity, sid=p.sid if p else None, reason=reason)
        if not conn.ws.closed:
            try:
                await asyncio.wait_for(conn.ws.close(), 1)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                conn.abort(reason)
        if p is not None and p.conn is conn and not p.closed and not self.closed:
            p.conn = None
            loop = asyncio.get_running_loop()
            p._departure = loop.call_later(self.departure_timeout,
                                           lambda: self._spawn(self._remove(p, "departure timeout")))

    # ---------------------------------------------------------------- actions (run on the double's loop)
    def _need(self, identity: str, room: str | None) -> SignalParticipant:
        p = self.find(identity, room)
        if p is None:
            raise LookupError(f"no connected participant {identity!r}" + (f" in room {room!r}" if room else ""))
        return p

    async def leave_participant(self, p: SignalParticipant, action: str = "DISCONNECT",
                                reason: str = "UNKNOWN_REASON") -> bool:
        action = action.upper()
        if action not in LEAVE_ACTIONS:
            raise ValueError(f"unknown leave action {action!r} (DISCONNECT, RESUME, RECONNECT)")
        reason = reason_name(reason)
        sent = await self._send_leave(p, action, reason)
        if action in ("DISCONNECT", "RECONNECT"):
            conn = p.conn
            await self._remove(p, reason)
            if conn is not None:
                conn.close_reason = f"leave {action}"
                await conn.close(f"leave {action}")
        return sent

    async def send_leave(self, identity: str, action: str = "RESUME", reason: str = "UNKNOWN_REASON", *,
                         room: str | None = None) -> bool:
        """Send Leave{reason, action} to the participant (recorded as ``leave_sent``). DISCONNECT and RECONNECT
        also remove the participant server-side, as livekit-server does."""
        reason_name(reason, strict=True)
        return await self.leave_participant(self._need(identity, room), action=action, reason=reason)

    async def abort_signal(self, identity: str, *, room: str | None = None) -> None:
        """TCP-abort the participant's signal socket (the client resumes)."""
        p = self._need(identity, room)
        if p.conn is not None:
            self._record("signal_aborted", identity=identity, sid=p.sid)
            p.conn.abort("aborted by abort_signal")

    async def lose_node(self, identity: str, *, room: str | None = None) -> None:
        """Node loss / migration: TCP abort, server PCs closed, participant forgotten, no Leave."""
        p = self._need(identity, room)
        self._record("node_lost", identity=identity, sid=p.sid)
        if p.conn is not None:
            p.conn.abort("node lost")
        await self._remove(p, "node lost")

    # ---------------------------------------------------------------- shutdown
    async def close(self) -> None:
        """Close every socket, peer, timer and task (the double calls this on stop)."""
        if self.closed:
            return
        self.closed = True
        self._closing.set()
        for p in list(self.participants.values()):
            if p._departure is not None:
                p._departure.cancel()
                p._departure = None
        for conn in list(self._conns):
            conn.abort("double stopping")
        for p in list(self.participants.values()):
            await self._remove(p, "double stopping", notify=False)
        pending = [t for t in list(self._handlers) + list(self._tasks) if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=3)
        for t in pending:
            if not t.done():
                t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)
        if self.double.allow_non_loopback:  # a stopped double leaves the loopback-only default behind
            _webrtc.POLICY.allow_non_loopback = False


__all__ = ["FAULTS", "SignalService", "SignalParticipant", "setup", "decode_join_request"]


def _dump(obj: Any) -> str:  # pragma: no cover - debugging aid
    return json.dumps(obj, default=str)
