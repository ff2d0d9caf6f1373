"""The signal WebSocket session: ``/rtc`` (v0) and ``/rtc/v1``, from the upgrade request to the socket's end.

:meth:`SignalSessions.handle` runs three steps: parse the request (:func:`~._signal_wire.parse_rtc_request`), apply
the faults that act before the upgrade (``signal_upgrade_status`` / ``_hang`` / ``_delay``, ``refuse_rejoin``), then
upgrade and run the session:

- join: JoinResponse (faults ``join_response_delay`` / ``_never``; ``ice_never`` / ``ice_candidates_hidden`` are
  taken per join), a duplicate identity is sent Leave{DUPLICATE_IDENTITY}; then v1 answers the publisher offer
  carried by the join request and v0 with ``subscriber_primary`` offers the subscriber PC;
- resume (``reconnect=1&sid=`` / ``JoinRequest.reconnect``): ReconnectResponse, then a ParticipantUpdate
  re-announcing the room; refused with Leave{STATE_MISMATCH, RECONNECT} for an unknown participant or the
  ``refuse_resume`` fault;
- signal requests: ping (fault ``drop_pongs``), offer / answer / trickle (the server's peer connections, see
  ``_webrtc``), leave, add_track, simulate;
- when the socket ends without a Leave the participant stays for ``departure_timeout`` seconds, waiting for a resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from . import _signal_media as _media
from . import _webrtc
from ._core import new_sid, room_proto
from ._signal_participant import SignalConn, SignalParticipant
from ._signal_wire import RtcRequest, SignalError, leave_request, parse_rtc_request

if TYPE_CHECKING:
    from ._signal import SignalService

log = logging.getLogger("lk_probe.testing.signal")


class SignalSessions:
    def __init__(self, svc: SignalService) -> None:
        self.svc = svc
        self.joined_before: set[tuple[str, str]] = set()  # (room, identity): a later fresh join is a rejoin

    async def handle(self, request: web.Request, path: str) -> web.StreamResponse:
        """``/rtc`` (``path="v0"``) or ``/rtc/v1`` (``"v1"``)."""
        svc = self.svc
        svc.apply_interface_policy()
        try:
            req = parse_rtc_request(request, path, svc.double)
        except SignalError as e:
            return svc.reject(e.status, e.reason, path=request.path)
        svc.record("signal_request", path=request.path, reconnect=req.reconnect, sid=req.sid, sdk=req.client["sdk"],
                   protocol=req.client["protocol"], identity=req.identity, room=req.room,
                   publisher_offer=bool(req.offer_sdp))
        refused = await self._upgrade_faults(request, req)
        if refused is not None:
            return refused
        return await self._upgrade(request, req)

    async def _upgrade_faults(self, request: web.Request, req: RtcRequest) -> web.StreamResponse | None:
        """The answer of a fault that acts before the upgrade, or None to go on with the upgrade."""
        svc, identity = self.svc, req.identity
        f = svc.take("signal_upgrade_status", identity, where=lambda f: f.params.get("path") in (None, req.path))
        if f is not None:
            status = int(f.params.get("status", 503))
            return svc.reject(status, f"lk_probe fault: signal_upgrade_status {status}", path=request.path,
                              identity=identity)
        if svc.take("signal_upgrade_hang", identity) is not None:
            await svc.hold(request, svc.hang_max)
            svc.record("signal_closed", identity=identity, sid=req.sid, reason="upgrade held (signal_upgrade_hang)")
            return web.Response(status=503, text="lk_probe fault: signal_upgrade_hang")
        f = svc.take("signal_upgrade_delay", identity)
        if f is not None and not await svc.hold(request, float(f.params.get("delay", 8.0))):
            svc.record("signal_closed", identity=identity, sid=req.sid, reason="client gone during signal_upgrade_delay")
            return web.Response(status=503, text="lk_probe fault: signal_upgrade_delay")
        if not req.reconnect and (req.room, identity) in self.joined_before:
            f = svc.take("refuse_rejoin", identity)
            if f is not None:
                status = int(f.params.get("status", 503))
                return svc.reject(status, f"lk_probe fault: refuse_rejoin {status}", path=request.path,
                                  identity=identity)
        return None

    async def _upgrade(self, request: web.Request, req: RtcRequest) -> web.StreamResponse:
        """Upgrade to the signal WebSocket, join or resume, serve its requests until it ends."""
        svc = self.svc
        transport = request.transport
        ws = web.WebSocketResponse(max_msg_size=svc.max_msg_size, autoping=True)
        if not ws.can_prepare(request).ok:
            return svc.reject(400, "not a WebSocket upgrade request", path=request.path, identity=req.identity)
        try:
            await ws.prepare(request)
        except (ConnectionError, RuntimeError) as e:
            svc.record("signal_closed", identity=req.identity, sid=req.sid, reason=f"upgrade failed: {e}")
            return ws
        conn = SignalConn(ws, transport, req.path, req.identity)
        svc.conns.add(conn)
        try:
            if await (self._resume(conn, req) if req.reconnect else self._join(conn, req)):
                await self._read_loop(conn)
        finally:
            svc.conns.discard(conn)
            await self._ended(conn)
        return ws

    # ---------------------------------------------------------------- join / resume
    async def _join(self, conn: SignalConn, req: RtcRequest) -> bool:
        svc, identity = self.svc, conn.identity
        if svc.take("join_response_never", identity) is not None:
            await self._wait_closed(conn, svc.hang_max)
            conn.close_reason = conn.close_reason or "no JoinResponse (join_response_never)"
            return False
        f = svc.take("join_response_delay", identity)
        if f is not None and not await self._wait_closed(conn, float(f.params.get("delay", 3.0))):
            conn.close_reason = conn.close_reason or "client gone during join_response_delay"
            return False

        room = svc.double.ensure_room(req.room, created_by="join", room_config=req.claims.get("roomConfig"))
        old = room.participants.get(identity)
        if old is not None:
            old_p = old.session
            if isinstance(old_p, SignalParticipant):
                await svc.send_leave_message(old_p, "DISCONNECT", "DUPLICATE_IDENTITY")
                await svc.remove(old_p, "DUPLICATE_IDENTITY")
            else:
                room.participants.pop(identity, None)

        single_pc = req.path == "v1"
        p = SignalParticipant(svc, room, identity, new_sid("PA_"), req.claims, single_pc=single_pc,
                              subscriber_primary=(not single_pc) and bool(svc.subscriber_primary), client=req.client)
        p.ice_never = svc.take("ice_never", identity) is not None
        p.hide_candidates = svc.take("ice_candidates_hidden", identity) is not None
        p.conn = conn
        conn.participant = p
        jr = rtc.JoinResponse(
            room=room_proto(room), participant=p.info(models.ParticipantInfo.JOINED),
            other_participants=[q.info() for q in svc.others(p)] + _media.caller_infos(svc, room.name),
            server_version=svc.double.version,
            subscriber_primary=p.subscriber_primary, server_region=svc.double.region,
            ping_timeout=int(svc.ping_timeout), ping_interval=int(svc.ping_interval), server_info=svc.server_info(),
            fast_publish=False)
        svc.participants[p.sid] = p
        room.participants[identity] = p.state
        self.joined_before.add((room.name, identity))
        await conn.send(rtc.SignalResponse(join=jr))
        svc.record("join_sent", identity=identity, sid=p.sid, room=room.name,
                   subscriber_primary=p.subscriber_primary, single_pc=single_pc, ice_never=p.ice_never)
        svc.record("participant_joined", identity=identity, sid=p.sid, room=room.name)
        await svc.broadcast_update(p, models.ParticipantInfo.ACTIVE)

        try:
            if single_pc and req.offer_sdp:
                await self._answer_offer(p, req.offer_sdp, req.offer_id)
            elif not single_pc and p.subscriber_primary:
                await self._offer_subscriber(p)
        except _webrtc.PeerClosed:
            pass  # removed (duplicate identity, leave, room deleted) while negotiating; the socket is closing
        return True

    async def _resume(self, conn: SignalConn, req: RtcRequest) -> bool:
        svc, identity = self.svc, conn.identity
        p = svc.participants.get(req.sid)
        refused = svc.take("refuse_resume", identity)
        if p is None or p.closed or p.identity != identity or refused is not None:
            why = "refuse_resume fault" if refused is not None else "participant unknown"
            sent = await conn.send(rtc.SignalResponse(leave=leave_request("RECONNECT", "STATE_MISMATCH")))
            svc.record("leave_sent", identity=identity, sid=req.sid, action="RECONNECT", reason="STATE_MISMATCH",
                       sent=sent, during="resume")
            if p is not None and not p.closed:
                await svc.remove(p, "STATE_MISMATCH")
            await conn.close(f"resume refused ({why})")
            return False
        old = p.conn
        p.conn = conn
        conn.participant = p
        p.cancel_departure()
        if old is not None and old is not conn and old.open:
            old.abort("replaced by resume")
        await conn.send(rtc.SignalResponse(reconnect=rtc.ReconnectResponse(
            server_info=svc.server_info(), last_message_seq=p.last_seq)))
        svc.record("reconnect_response", identity=identity, sid=p.sid, room=p.room.name, path=conn.path)
        others = [q.info() for q in svc.others(p)] + _media.caller_infos(svc, p.room.name)
        if others:
            await conn.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=others)))
        if req.offer_sdp:
            try:
                await self._answer_offer(p, req.offer_sdp, req.offer_id)
            except _webrtc.PeerClosed:
                pass
        return True

    async def _wait_closed(self, conn: SignalConn, seconds: float) -> bool:
        """Read (and ignore) messages for ``seconds``; return False if the socket closed or we stop."""
        svc = self.svc
        deadline = time.monotonic() + min(seconds, svc.hang_max)
        while not svc.closing.is_set():
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

    async def _ended(self, conn: SignalConn) -> None:
        """The socket ended: close it for good; its participant (if no resume replaced it) waits for a resume."""
        svc = self.svc
        p = conn.participant
        reason = conn.close_reason or "closed"
        svc.record("signal_closed", identity=conn.identity, sid=p.sid if p else None, reason=reason)
        await conn.close(reason, timeout=1)
        if p is not None and p.conn is conn and not p.closed and not svc.closed:
            p.conn = None
            p.departure = asyncio.get_running_loop().call_later(
                svc.departure_timeout, lambda: svc.spawn(svc.remove(p, "departure timeout")))

    # ---------------------------------------------------------------- signal requests
    async def _read_loop(self, conn: SignalConn) -> None:
        record = self.svc.record
        async for msg in conn.ws:
            if msg.type == WSMsgType.BINARY:
                req = rtc.SignalRequest()
                try:
                    req.ParseFromString(msg.data)
                except DecodeError as e:
                    record("signal_bad_message", identity=conn.identity, reason=f"undecodable SignalRequest: {e}",
                           size=len(msg.data))
                    continue
                try:
                    await self._on_request(conn, req)
                except _webrtc.PeerClosed:
                    pass  # the participant went away while its negotiation waited
                except Exception as e:  # a handler bug must not kill the participant's signal
                    log.exception("signal handler failed")
                    record("signal_bad_message", identity=conn.identity,
                           reason=f"{req.WhichOneof('message')} failed: {e!r}", size=len(msg.data))
            elif msg.type == WSMsgType.TEXT:
                record("signal_bad_message", identity=conn.identity,
                       reason="JSON (text) signalling is not supported", size=len(msg.data))
            elif msg.type == WSMsgType.ERROR:
                exc = conn.ws.exception()
                reason = f"{exc}" if exc is not None else "websocket error"
                if conn.ws.close_code == 1009 or "exceeds limit" in reason:
                    record("signal_bad_message", identity=conn.identity, reason=f"message too big: {reason}",
                           size=None)
                conn.close_reason = conn.close_reason or reason
                break
        if conn.close_reason is None:
            conn.close_reason = "client closed" if conn.ws.close_code in (None, 1000, 1001, 1005) \
                else f"closed {conn.ws.close_code}"

    async def _on_request(self, conn: SignalConn, req: rtc.SignalRequest) -> None:
        svc = self.svc
        which = req.WhichOneof("message")
        p = conn.participant
        svc.record("signal_msg", identity=conn.identity, sid=p.sid if p else None, which=which)
        if p is None or p.conn is not conn:
            return  # a stale socket (replaced by a resume)
        if which in ("ping_req", "ping") and not conn.drop_pongs:
            # taken at most once per connection, sticky from then on: the live connection goes silent
            conn.drop_pongs = svc.take("drop_pongs", conn.identity) is not None
            if conn.drop_pongs:  # the connection goes silent now: say since when
                svc.record("pongs_withheld", identity=conn.identity, last_pong=conn.last_pong)
        if which == "ping_req":
            if not conn.drop_pongs:
                await conn.send(rtc.SignalResponse(pong_resp=rtc.Pong(
                    last_ping_timestamp=req.ping_req.timestamp, timestamp=int(time.time() * 1000))))
                conn.last_pong = time.time()
        elif which == "ping":
            if not conn.drop_pongs:
                await conn.send(rtc.SignalResponse(pong=req.ping))
                conn.last_pong = time.time()
        elif which == "offer":
            await self._answer_offer(p, req.offer.sdp, req.offer.id)
        elif which == "answer":
            if p.sub is not None:
                await p.sub.set_answer(req.answer.sdp)
        elif which == "trickle":
            await self._trickle(p, req.trickle)
        elif which == "leave":
            conn.close_reason = "client leave"
            await svc.remove(p, models.DisconnectReason.Name(req.leave.reason) if req.leave.reason else
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
        svc = self.svc
        kind = s.WhichOneof("scenario")
        if kind in ("node_failure", "migration"):
            await svc.lose_node(p.identity, room=p.room.name)
        elif kind == "server_leave":
            await svc.leave_participant(p, action="DISCONNECT", reason="SERVER_SHUTDOWN")
        elif kind == "leave_request_full_reconnect":
            await svc.leave_participant(p, action="RECONNECT", reason="CLIENT_INITIATED")

    async def _trickle(self, p: SignalParticipant, t: rtc.TrickleRequest) -> None:
        svc = self.svc
        try:
            init = _webrtc.parse_candidate_init(t.candidateInit)
        except ValueError as e:
            svc.record("signal_bad_message", identity=p.identity, reason=f"bad candidateInit: {e}", size=None)
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
        svc.record("trickle", identity=p.identity, target=target, result=result, candidate=init.get("candidate", ""))

    # ---------------------------------------------------------------- the server's peer connections
    def _new_peer(self, p: SignalParticipant, role: str) -> _webrtc.ServerPeer:
        svc = self.svc
        name = f"{p.sid}/{role}"

        def on_state(state: str) -> None:
            svc.record("pc_state", identity=p.identity, sid=p.sid, pc=name, role=role, state=state)

        def on_message(label: str, data: bytes) -> None:
            svc.relay.relay(p, label, data)

        def on_restart(old: str, new: str) -> None:
            svc.record("ice_restart", identity=p.identity, sid=p.sid, pc=name, old=old, new=new)

        def on_open(label: str) -> None:
            if p.pending_data and not p.closed:
                svc.relay.flush(p)

        peer = _webrtc.ServerPeer(name=name, role=role, on_state=on_state, on_message=on_message,
                                  on_ice_restart=on_restart, on_channel_open=on_open,
                                  strip_local_candidates=p.ice_never or p.hide_candidates,
                                  ignore_remote_candidates=p.ice_never)
        svc.peers_created.append(peer)
        target = rtc.PUBLISHER if role == "publisher" else rtc.SUBSCRIBER
        for init in p.pending_trickles.pop(target, []):
            peer.buffer_candidate(init)
        return peer

    async def _answer_offer(self, p: SignalParticipant, sdp: str, offer_id: int) -> None:
        if p.closed:
            return
        if p.pub is None:
            p.pub = self._new_peer(p, "publisher")
        pending = _media.pending_tracks(self.svc, p) if p.single_pc else []
        answer, mids = await p.pub.answer(sdp, open_channels=p.single_pc,
                                          send=[(caller.stream_id, track) for caller, track in pending])
        if p.closed or p.conn is None:
            return
        await p.conn.send(rtc.SignalResponse(answer=rtc.SessionDescription(
            type="answer", sdp=answer, id=offer_id, mid_to_track_id=p.pub.mid_to_track_id)))
        self.svc.record("answer_sent", identity=p.identity, sid=p.sid, pc=p.pub.name)
        _media.delivered(self.svc, p, [(caller, mid) for (caller, _), mid in zip(pending, mids) if mid], p.pub.name)
        if any(mid is None for mid in mids):  # the offer had no free audio m-line: ask for one
            await _media.offer_pending(self.svc, p)

    async def _offer_subscriber(self, p: SignalParticipant) -> None:
        if p.sub is not None or p.closed:
            return
        p.sub = self._new_peer(p, "subscriber")
        await self.reoffer_subscriber(p)

    async def reoffer_subscriber(self, p: SignalParticipant) -> None:
        """Offer the subscriber PC (again), with the caller tracks ``p`` does not have yet."""
        if p.sub is None or p.closed:
            return
        pending = _media.pending_tracks(self.svc, p)
        sdp, mids = await p.sub.offer(send=[(caller.stream_id, track) for caller, track in pending])
        if p.closed or p.conn is None:
            return
        await p.conn.send(rtc.SignalResponse(offer=rtc.SessionDescription(
            type="offer", sdp=sdp, mid_to_track_id=p.sub.mid_to_track_id)))
        self.svc.record("offer_sent", identity=p.identity, sid=p.sid, pc=p.sub.name)
        _media.delivered(self.svc, p, [(caller, mid) for (caller, _), mid in zip(pending, mids)], p.sub.name)
