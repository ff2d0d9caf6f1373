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

This module is the :class:`SignalService` (``double.signal``): its settings, who is connected, the participants'
lifecycle (join announcements, removal, Leave) and shutdown. The parts it is made of:

- ``_signal_wire``: request parsing, token checks, Leave and disconnect-reason values;
- ``_signal_session``: the signal WebSocket session (upgrade faults, join, resume, signal requests, peers);
- ``_signal_http``: validate and the region list;
- ``_signal_relay``: data packets between participants;
- ``_signal_actions``: the fault actions a test runs (methods of the service);
- ``_signal_media``: simulated callers publishing a tone to the others (``add_caller``, media faults);
- ``_signal_participant``: :class:`SignalParticipant` (``ParticipantState.session``, survives signal reconnects) and
  the signal connection.

They see the server through :class:`~._core.ServerDouble`. Faults are listed in :data:`FAULTS`; run actions on the
double's loop, e.g. ``double.call(double.signal.send_leave, "alice", action="RESUME")``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from aiohttp import web
from livekit.protocol import models, rtc

from . import _signal_actions, _signal_media, _webrtc
from ._core import Fault, ServerDouble, server_info
from ._signal_http import HttpEndpoints
from ._signal_participant import SignalConn, SignalParticipant
from ._signal_relay import DataRelay
from ._signal_session import SignalSessions
from ._signal_wire import decode_join_request, leave_request

log = logging.getLogger("lk_probe.testing.signal")

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
                  "firing = one connection goes silent; event `pongs_withheld` with its `last_pong` time), so the "
                  "client's ping timeout fires and it resumes",
    "refuse_resume": "answer a resume with Leave{STATE_MISMATCH, RECONNECT} and forget the participant, like a real "
                     "server that lost it",
    "refuse_rejoin": "refuse a full rejoin (fresh join of an identity that was in the room before) with HTTP "
                     "`status` (default 503); count=None means the client never recovers",
    "region_hang": "never answer GET /settings/regions",
    **_signal_media.FAULTS,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup(double: ServerDouble, app: web.Application) -> SignalService:
    """Add the signalling routes to ``app``, register the faults; return the service (``double.signal``)."""
    svc = SignalService(double)
    sessions, http = svc.sessions, svc.http
    app.router.add_get("/rtc", svc.tracked(lambda request: sessions.handle(request, "v0")))
    app.router.add_get("/rtc/v1", svc.tracked(lambda request: sessions.handle(request, "v1")))
    app.router.add_get("/rtc/validate", svc.tracked(http.validate))
    app.router.add_get("/rtc/v1/validate", svc.tracked(http.validate))
    app.router.add_get("/settings/regions", svc.tracked(http.regions))
    double.register_faults(FAULTS)
    double.add_stop_hook(svc.close)
    return svc


class SignalService:
    """Signalling + WebRTC of the double. Settings are plain attributes, changeable while running."""

    # the fault actions (see _signal_actions); run them on the double's loop
    send_leave = _signal_actions.send_leave
    leave_participant = _signal_actions.leave_participant
    abort_signal = _signal_actions.abort_signal
    lose_node = _signal_actions.lose_node
    # simulated callers (see _signal_media): add_caller(room, identity, hz=…), publish(caller), remove_caller(…)
    add_caller = _signal_media.add_caller
    publish = _signal_media.publish
    remove_caller = _signal_media.remove_caller

    def __init__(self, double: ServerDouble) -> None:
        self.double = double
        self.ping_interval = 5  # seconds, sent in the JoinResponse (real server: 5 / 15)
        self.ping_timeout = 15
        self.subscriber_primary = True  # v0 only; v1 is single-PC, subscriber_primary=False
        self.departure_timeout = 20.0  # a participant whose signal dropped without Leave is forgotten after this
        self.hang_max = 120.0  # upper bound of every "hang" fault
        self.max_msg_size = double.max_message_size  # larger signal messages: closed with 1009
        self.participants: dict[str, SignalParticipant] = {}  # by sid
        self.callers: dict[str, list[_signal_media.Caller]] = {}  # simulated callers by room name
        self.conns: set[SignalConn] = set()  # open signal sockets
        self.peers_created: list[_webrtc.ServerPeer] = []  # every aiortc peer, for leak checks
        self.closing = asyncio.Event()
        self.closed = False
        self.sessions = SignalSessions(self)
        self.http = HttpEndpoints(self)
        self.relay = DataRelay(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    # ---------------------------------------------------------------- helpers for the parts
    def record(self, kind: str, **data: Any) -> None:
        self.double.events.record(kind, **data)

    def take(self, name: str, identity: str | None, where: Callable[[Fault], bool] | None = None) -> Fault | None:
        return self.double.faults.take(name, identity, where=where)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)  # keep a reference: the loop holds only a weak one
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.warning("signal task failed: %r", t.exception(), exc_info=t.exception())

    def tracked(self, handler: Handler) -> Handler:
        """``handler`` as a route whose running requests :meth:`close` waits for (and cancels if they hang)."""

        async def route(request: web.Request) -> web.StreamResponse:
            task = asyncio.current_task()
            if task is not None:
                self._handlers.add(task)
            try:
                return await handler(request)
            finally:
                if task is not None:
                    self._handlers.discard(task)

        return route

    def reject(self, status: int, reason: str, **data: Any) -> web.Response:
        self.record("signal_rejected", status=status, reason=reason, **data)
        return web.Response(status=status, text=reason)

    async def hold(self, request: web.Request | None, seconds: float) -> bool:
        """Wait up to ``seconds`` (bounded by hang_max); return False early if the client went away or we stop."""
        deadline = time.monotonic() + min(seconds, self.hang_max)
        while not self.closing.is_set():
            if request is not None and (request.transport is None or request.transport.is_closing()):
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            try:
                await asyncio.wait_for(self.closing.wait(), min(left, 0.1))
            except asyncio.TimeoutError:
                pass
        return False

    def apply_interface_policy(self) -> None:
        """Which interfaces WebRTC may use: loopback only, or the host's when the double was built with
        ``allow_non_loopback``. The policy is process-wide (aioice is patched process-wide), so every signal request
        sets it to that of the double answering it."""
        _webrtc.POLICY.allow_non_loopback = self.double.allow_non_loopback

    def server_info(self) -> models.ServerInfo:
        return server_info(self.double)

    # ---------------------------------------------------------------- who is connected
    def others(self, p: SignalParticipant) -> list[SignalParticipant]:
        """The other live participants of ``p``'s room that signalling connected."""
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

    # ---------------------------------------------------------------- participant lifecycle
    async def broadcast_update(self, p: SignalParticipant, state: int) -> None:
        """Tell the others in ``p``'s room about ``p`` (ParticipantUpdate with ``p`` in ``state``)."""
        upd = rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[p.info(state)]))
        for q in self.others(p):
            if q.conn is not None:
                await q.conn.send(upd)

    async def send_leave_message(self, p: SignalParticipant, action: str, reason: str) -> bool:
        """Send Leave{reason, action} on ``p``'s signal socket (recorded as ``leave_sent``); True if it was sent."""
        sent = bool(p.conn is not None and await p.conn.send(rtc.SignalResponse(leave=leave_request(action, reason))))
        self.record("leave_sent", identity=p.identity, sid=p.sid, action=action, reason=reason, sent=sent)
        return sent

    async def remove(self, p: SignalParticipant, reason: str, *, notify: bool = True) -> None:
        """Forget ``p``: out of its room, the others told (unless ``notify`` is false), its peer connections closed."""
        if p.closed:
            return
        p.closed = True
        p.cancel_departure()
        if p.room.participants.get(p.identity) is p.state:
            del p.room.participants[p.identity]
        self.participants.pop(p.sid, None)
        self.record("participant_left", identity=p.identity, sid=p.sid, room=p.room.name, reason=reason)
        if notify:
            await self.broadcast_update(p, models.ParticipantInfo.DISCONNECTED)
        for peer in p.peers():
            await peer.close()

    # ---------------------------------------------------------------- shutdown
    async def close(self) -> None:
        """Close every socket, peer, timer and task (the double calls this on stop)."""
        if self.closed:
            return
        self.closed = True
        self.closing.set()
        self.callers.clear()
        for p in list(self.participants.values()):
            p.cancel_departure()
        for conn in list(self.conns):
            conn.abort("double stopping")
        for p in list(self.participants.values()):
            await self.remove(p, "double stopping", notify=False)
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
