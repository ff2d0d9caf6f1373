"""The two objects signalling keeps per client: a :class:`SignalConn` per signal WebSocket, and a
:class:`SignalParticipant` per participant, which outlives its connections (a resume moves it to a new one).

``SignalParticipant`` is the participant's ``ParticipantState.session``: the room and Twirp RemoveParticipant reach it
through :meth:`SignalParticipant.leave`. It holds the participant's peer connections, candidates trickled before a
peer exists, data waiting for a downstream channel, and the per-join fault switches (``ice_never``,
``hide_candidates``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from livekit.protocol import models, rtc

from . import _webrtc
from ._core import ParticipantState, RoomState

if TYPE_CHECKING:
    from ._signal import SignalService

log = logging.getLogger("lk_probe.testing.signal")

_KINDS = {"agent": models.ParticipantInfo.AGENT, "sip": models.ParticipantInfo.SIP,
          "egress": models.ParticipantInfo.EGRESS, "ingress": models.ParticipantInfo.INGRESS}


class SignalConn:
    """One signal WebSocket: serialised sends, a close reason, a TCP abort."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, path: str,
                 identity: str) -> None:
        self.ws = ws
        self.transport = transport
        self.path = path  # "v0" or "v1"
        self.identity = identity
        self.participant: SignalParticipant | None = None
        self.drop_pongs = False
        self.last_pong: float | None = None  # when the last pong was sent (time.time())
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

    async def close(self, reason: str = "server closed", timeout: float = 2) -> None:
        """Close the WebSocket; abort it if the close handshake takes longer than ``timeout``."""
        if self.close_reason is None:
            self.close_reason = reason
        if not self.ws.closed:
            try:
                await asyncio.wait_for(self.ws.close(), timeout)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                self.abort(reason)


class SignalParticipant:
    """A participant as the signalling layer sees it; ``ParticipantState.session`` points here."""

    def __init__(self, svc: SignalService, room: RoomState, identity: str, sid: str, claims: dict[str, Any],
                 *, single_pc: bool, subscriber_primary: bool, client: dict[str, Any]) -> None:
        self.svc = svc
        self.room = room
        self.identity = identity
        self.sid = sid
        self.claims = claims
        self.single_pc = single_pc
        self.subscriber_primary = subscriber_primary
        self.client = client
        self.conn: SignalConn | None = None
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
        self.departure: asyncio.TimerHandle | None = None  # forgets the participant when its signal stays gone

    def __repr__(self) -> str:
        return f"<SignalParticipant {self.identity} {self.sid} room={self.room.name}>"

    async def leave(self, action: str = "DISCONNECT", reason: str = "UNKNOWN_REASON") -> bool:
        """Send a LeaveRequest to this participant (used by Twirp RemoveParticipant etc.)."""
        return await self.svc.leave_participant(self, action=action, reason=reason)

    def cancel_departure(self) -> None:
        if self.departure is not None:
            self.departure.cancel()
            self.departure = None

    def info(self, state: int = models.ParticipantInfo.ACTIVE) -> models.ParticipantInfo:
        return models.ParticipantInfo(
            sid=self.sid, identity=self.identity, state=state, name=self.state.name, metadata=self.state.metadata,
            joined_at=int(self.joined_at), joined_at_ms=int(self.joined_at * 1000), permission=self.permission,
            region=self.svc.double.region, kind=_KINDS.get(self.kind, models.ParticipantInfo.STANDARD),
            attributes=self.state.attributes, client_protocol=int(self.client.get("client_protocol") or 0))

    def downstream(self, label: str) -> Any:
        """The open channel for data *to* this participant, or None: like livekit-server, on the primary PC (v1: the
        single PC, with the server's own channels; v0 subscriber-primary: the subscriber PC; v0 publisher-primary:
        the client's own channels on its publisher PC)."""
        peer = self.sub if (not self.single_pc and self.subscriber_primary) else self.pub
        return peer.downstream(label) if peer is not None else None

    def peers(self) -> list[_webrtc.ServerPeer]:
        return [p for p in (self.pub, self.sub) if p is not None]
