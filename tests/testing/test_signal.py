"""The signalling wire protocol of the double, spoken by a raw WebSocket client (no WebRTC, no netns needed):
JoinResponse fields, v0/v1 join parsing, ping/pong, announcements, resume, Leave actions, bad input, validate,
regions, and that close() leaves nothing behind."""

from __future__ import annotations

import asyncio
import base64
import gzip
import time

import aiohttp
import pytest
from livekit.protocol import models, rtc

from lk_probe.testing import FAULTS, mint_token
from lk_probe.testing import _signal, _webrtc

from rtc_helpers import assert_peers_closed, call, no_leaks, wait_event  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_leaks")]


def v1_query(*, gz: bool = True, reconnect: bool = False, sid: str = "") -> str:
    jr = rtc.JoinRequest(client_info=models.ClientInfo(sdk=models.ClientInfo.PYTHON, protocol=17, version="raw"),
                         reconnect=reconnect, participant_sid=sid)
    raw = jr.SerializeToString()
    w = rtc.WrappedJoinRequest(compression=rtc.WrappedJoinRequest.GZIP if gz else rtc.WrappedJoinRequest.NONE,
                               join_request=gzip.compress(raw) if gz else raw)
    return "join_request=" + base64.urlsafe_b64encode(w.SerializeToString()).decode().rstrip("=")


class Raw:
    """A raw signal client."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def recv(self, which: str | None = None, timeout: float = 5.0) -> rtc.SignalResponse:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {which or 'message'} within {timeout}s")
            msg = await self.ws.receive(timeout=left)
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise AssertionError(f"socket ended: {msg.type} {msg.data!r} {msg.extra!r}")
            r = rtc.SignalResponse()
            r.ParseFromString(msg.data)
            if which is None or r.WhichOneof("message") == which:
                return r

    async def send(self, req: rtc.SignalRequest) -> None:
        await self.ws.send_bytes(req.SerializeToString())

    async def ping(self) -> rtc.Pong:
        ts = int(time.time() * 1000)
        await self.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=ts, rtt=1)))
        r = await self.recv("pong_resp")
        assert r.pong_resp.last_ping_timestamp == ts
        return r.pong_resp


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


async def connect(http, d, identity: str, room: str = "r", *, path: str = "v0", query: str = "",
                  token: str | None = None) -> tuple[Raw, rtc.JoinResponse]:
    tok = token or d.token(identity, room)
    if path == "v1":
        url = f"{d.url}/rtc/v1?{query or v1_query()}"
    else:
        url = f"{d.url}/rtc?sdk=python&protocol=16&auto_subscribe=1{'&' + query if query else ''}"
    ws = await http.ws_connect(url, headers={"Authorization": f"Bearer {tok}"})
    raw = Raw(ws)
    first = await raw.recv()
    assert first.WhichOneof("message") == "join", first
    return raw, first.join


def test_faults_registered(lk_double):
    for name in _signal.FAULTS:
        assert name in lk_double.fault_descriptions
        assert name in FAULTS
    with pytest.raises(ValueError):
        lk_double.faults.add("no_such_fault")


async def test_v0_join_response_and_subscriber_offer(lk_double, http):
    d = lk_double
    raw, jr = await connect(http, d, "alice", "room-1")
    assert jr.room.sid.startswith("RM_") and jr.room.name == "room-1"
    assert jr.participant.sid.startswith("PA_") and jr.participant.identity == "alice"
    assert (jr.ping_interval, jr.ping_timeout) == (5, 15)
    assert len(jr.ice_servers) == 0
    assert jr.subscriber_primary is True
    assert jr.server_info.region == d.region and jr.server_info.node_id == d.node_id
    assert jr.server_info.version and jr.server_info.protocol > 0
    offer = await raw.recv("offer")
    sdp = offer.offer.sdp
    assert "m=application" in sdp and "a=candidate" in sdp
    for line in sdp.splitlines():
        if line.startswith("a=candidate"):
            assert " 127.0.0.1 " in line, line  # loopback only
    await raw.ping()
    await raw.send(rtc.SignalRequest(ping=12345))
    assert (await raw.recv("pong")).pong == 12345
    req = await wait_event(d, "signal_request", lambda e: e["identity"] == "alice")
    assert (req["path"], req["reconnect"], req["sdk"], req["protocol"]) == ("/rtc", False, "python", 16)
    assert d.rooms["room-1"].participants["alice"].session.sid == jr.participant.sid
    await raw.ws.close()


@pytest.mark.parametrize("gz", [True, False])
async def test_v1_join_request(lk_double, http, gz):
    d = lk_double
    raw, jr = await connect(http, d, "alice", path="v1", query=v1_query(gz=gz))
    assert jr.subscriber_primary is False
    ev = await wait_event(d, "join_sent", lambda e: e["identity"] == "alice")
    assert ev["single_pc"] is True
    req = await wait_event(d, "signal_request")
    assert (req["path"], req["sdk"], req["protocol"]) == ("/rtc/v1", "PYTHON", 17)
    await raw.ws.close()


async def test_plain_get_is_rejected(lk_double, http):
    d = lk_double
    async with http.get(f"{d.http_url}/rtc?sdk=python", headers={"Authorization": f"Bearer {d.token('a', 'r')}"}) as r:
        assert r.status == 400 and "WebSocket" in await r.text()
    assert (await wait_event(d, "signal_rejected"))["status"] == 400


async def test_access_token_query_parameter(lk_double, http):
    d = lk_double
    ws = await http.ws_connect(f"{d.url}/rtc?sdk=python&protocol=16&access_token={d.token('q', 'r')}")
    first = await Raw(ws).recv()
    assert first.WhichOneof("message") == "join"
    await ws.close()


async def test_participants_announced(lk_double, http):
    d = lk_double
    alice, _ = await connect(http, d, "alice")
    bob, jr = await connect(http, d, "bob")
    assert [p.identity for p in jr.other_participants] == ["alice"]
    upd = await alice.recv("update")
    assert upd.update.participants[0].identity == "bob"
    assert upd.update.participants[0].state == models.ParticipantInfo.ACTIVE
    await bob.send(rtc.SignalRequest(leave=rtc.LeaveRequest(reason=models.CLIENT_INITIATED)))
    upd = await alice.recv("update")
    assert upd.update.participants[0].state == models.ParticipantInfo.DISCONNECTED
    ev = await wait_event(d, "participant_left", lambda e: e["identity"] == "bob")
    assert ev["reason"] == "CLIENT_INITIATED"
    await alice.ping()
    await alice.ws.close()
    await bob.ws.close()


@pytest.mark.parametrize("bad", ["%%%not-base64%%%", base64.urlsafe_b64encode(b"\xff\xfe garbage").decode(),
                                 base64.urlsafe_b64encode(rtc.WrappedJoinRequest(
                                     compression=rtc.WrappedJoinRequest.GZIP,
                                     join_request=b"not gzip").SerializeToString()).decode()])
async def test_malformed_join_request(lk_double, http, bad):
    d = lk_double
    async with http.get(f"{d.url.replace('ws', 'http', 1)}/rtc/v1?join_request={bad}",
                        headers={"Authorization": f"Bearer {d.token('alice', 'r')}",
                                 "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                 "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()}) as resp:
        assert resp.status == 400
        assert "malformed join_request" in await resp.text()
    ev = await wait_event(d, "signal_rejected")
    assert ev["status"] == 400 and "malformed" in ev["reason"]
    assert not d.events.of_kind("join_sent")


async def test_bad_tokens(lk_double, http):
    d = lk_double
    other = mint_token(d.api_key, "wrong-secret-wrong-secret-wrong-secret", identity="x", video={"roomJoin": True, "room": "r"})
    expired = mint_token(d.api_key, d.api_secret, identity="x", ttl=-60, video={"roomJoin": True, "room": "r"})
    no_join = mint_token(d.api_key, d.api_secret, identity="x", video={"room": "r"})
    cases = [(None, "no access token"), ("garbage", "invalid token"), (other, "invalid token"),
             (expired, "token expired"), (no_join, "roomJoin")]
    http_url = d.http_url
    for tok, why in cases:
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        paths = ("/rtc?sdk=python&protocol=16", "/rtc/validate?sdk=python", "/rtc/v1/validate?" + v1_query())
        for path in paths:
            async with http.get(http_url + path, headers=headers) as resp:
                assert resp.status == 401, (path, why)
                assert why in await resp.text(), (path, why)
        with pytest.raises(aiohttp.WSServerHandshakeError) as ei:
            await http.ws_connect(f"{d.url}/rtc?sdk=python&protocol=16", headers=headers)
        assert ei.value.status == 401
    assert len(d.events.of_kind("signal_rejected", lambda e: e["status"] == 401)) == 2 * len(cases)
    assert not d.events.of_kind("join_sent")


async def test_bad_messages_do_not_hurt_anyone(lk_double, http):
    d = lk_double
    alice, _ = await connect(http, d, "alice")
    bob, _ = await connect(http, d, "bob")
    await alice.ws.send_bytes(b"\xff\xff\xff\xff not a protobuf")
    ev = await wait_event(d, "signal_bad_message", lambda e: e["identity"] == "alice")
    assert "undecodable SignalRequest" in ev["reason"]
    await alice.ws.send_str('{"json": "signalling"}')
    ev = await wait_event(d, "signal_bad_message", lambda e: "JSON" in e["reason"])
    await alice.send(rtc.SignalRequest(trickle=rtc.TrickleRequest(candidateInit="{not json", target=rtc.PUBLISHER)))
    await wait_event(d, "signal_bad_message", lambda e: "candidateInit" in e["reason"])
    await alice.ping()  # still served
    await bob.ping()
    await alice.ws.close()
    await bob.ws.close()


async def test_oversized_message_closes_only_that_socket(lk_double, http):
    d = lk_double
    alice, _ = await connect(http, d, "alice")
    bob, _ = await connect(http, d, "bob")
    await alice.ws.send_bytes(b"\0" * (d.signal.max_msg_size + 1))
    msg = await alice.ws.receive(timeout=5)
    while msg.type == aiohttp.WSMsgType.BINARY:  # the subscriber offer etc. may still be queued
        msg = await alice.ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert alice.ws.close_code == 1009
    ev = await wait_event(d, "signal_bad_message", lambda e: "too big" in e["reason"])
    assert ev["identity"] == "alice"
    await bob.ping()
    await bob.ws.close()


async def test_resume_of_unknown_participant_is_refused(lk_double, http):
    d = lk_double
    raw = Raw(await http.ws_connect(f"{d.url}/rtc?sdk=python&protocol=16&reconnect=1&sid=PA_unknown",
                                    headers={"Authorization": f"Bearer {d.token('alice', 'r')}"}))
    r = await raw.recv()
    assert r.WhichOneof("message") == "leave"
    assert (r.leave.action, r.leave.reason) == (rtc.LeaveRequest.RECONNECT, models.STATE_MISMATCH)
    msg = await raw.ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    ev = await wait_event(d, "leave_sent", lambda e: e["identity"] == "alice")
    assert ev["during"] == "resume" and ev["sent"] is True


@pytest.mark.parametrize("path", ["v0", "v1"])
async def test_resume_keeps_participant_and_reannounces(lk_double, http, path):
    d = lk_double
    bob, _ = await connect(http, d, "bob", path=path)
    alice, jr = await connect(http, d, "alice", path=path)
    sid = jr.participant.sid
    await alice.ws.close()  # no Leave: the participant stays for departure_timeout
    await wait_event(d, "signal_closed", lambda e: e["identity"] == "alice")
    assert d.rooms["r"].participants["alice"].sid == sid
    q = v1_query(reconnect=True, sid=sid) if path == "v1" else f"reconnect=1&sid={sid}"
    url = f"{d.url}/rtc/v1?{q}" if path == "v1" else f"{d.url}/rtc?sdk=python&protocol=16&{q}"
    alice = Raw(await http.ws_connect(url, headers={"Authorization": f"Bearer {d.token('alice', 'r')}"}))
    r = await alice.recv()
    assert r.WhichOneof("message") == "reconnect"
    upd = await alice.recv("update")
    assert [p.identity for p in upd.update.participants] == ["bob"]
    ev = await wait_event(d, "reconnect_response")
    assert ev["sid"] == sid
    await alice.ping()
    assert not d.events.of_kind("participant_left")
    await alice.ws.close()
    await bob.ws.close()


async def test_departure_timeout_forgets_participant(lk_double, http):
    d = lk_double
    d.signal.departure_timeout = 0.3
    alice, _ = await connect(http, d, "alice")
    await alice.ws.close()
    ev = await wait_event(d, "participant_left", lambda e: e["identity"] == "alice", timeout=5)
    assert ev["reason"] == "departure timeout"
    assert "alice" not in d.rooms["r"].participants


async def test_duplicate_identity(lk_double, http):
    d = lk_double
    first, jr1 = await connect(http, d, "alice")
    second, jr2 = await connect(http, d, "alice")
    r = await first.recv("leave")
    assert (r.leave.action, r.leave.reason) == (rtc.LeaveRequest.DISCONNECT, models.DUPLICATE_IDENTITY)
    assert d.rooms["r"].participants["alice"].sid == jr2.participant.sid != jr1.participant.sid
    await second.ping()
    await second.ws.close()


@pytest.mark.parametrize("action,reason", [("RESUME", "MIGRATION"), ("RECONNECT", "UNKNOWN_REASON"),
                                           ("DISCONNECT", "PARTICIPANT_REMOVED")])
async def test_send_leave(lk_double, http, action, reason):
    d = lk_double
    alice, _ = await connect(http, d, "alice")
    assert await call(d, d.signal.send_leave, "alice", action=action, reason=reason) is True
    r = await alice.recv("leave")
    assert rtc.LeaveRequest.Action.Name(r.leave.action) == action
    assert models.DisconnectReason.Name(r.leave.reason) == reason
    assert r.leave.can_reconnect is (action != "DISCONNECT")
    ev = await wait_event(d, "leave_sent")
    assert (ev["identity"], ev["action"], ev["reason"], ev["sent"]) == ("alice", action, reason, True)
    assert ("alice" in d.rooms["r"].participants) is (action == "RESUME")
    await alice.ws.close()


async def test_actions_reject_bad_arguments(lk_double, http):
    d = lk_double
    with pytest.raises(LookupError):
        await call(d, d.signal.send_leave, "nobody")
    alice, _ = await connect(http, d, "alice")
    with pytest.raises(ValueError):
        await call(d, d.signal.send_leave, "alice", action="EXPLODE")
    with pytest.raises(ValueError):
        await call(d, d.signal.send_leave, "alice", reason="NOT_A_REASON")
    with pytest.raises(LookupError):
        await call(d, d.signal.lose_node, "nobody")
    await alice.ws.close()


async def test_session_leave_for_twirp_remove(lk_double, http):
    """RemoveParticipant / delete_room call ``ParticipantState.session.leave`` with free-form reasons."""
    d = lk_double
    alice, _ = await connect(http, d, "alice", "room-x")
    assert await call(d, d.delete_room, "room-x")
    r = await alice.recv("leave")
    assert r.leave.reason == models.ROOM_DELETED and r.leave.action == rtc.LeaveRequest.DISCONNECT
    await alice.ws.close()


async def test_trickle_before_offer_is_buffered(lk_double, http):
    d = lk_double
    alice, _ = await connect(http, d, "alice")
    init = _webrtc.candidate_init_json("candidate:1 1 udp 2122260223 127.0.0.2 50000 typ host", "0", 0)
    await alice.send(rtc.SignalRequest(trickle=rtc.TrickleRequest(candidateInit=init, target=rtc.PUBLISHER)))
    ev = await wait_event(d, "trickle")
    assert ev["result"] == "buffered"
    await alice.ws.close()


def test_loopback_filters():
    assert _webrtc.is_loopback("127.0.0.2") and not _webrtc.is_loopback("192.0.2.2")
    assert not _webrtc.is_loopback("abcd.local")
    sdp = ("v=0\r\na=candidate:1 1 udp 2122260223 127.0.0.2 5000 typ host\r\n"
           "a=candidate:2 1 udp 2122260223 192.0.2.2 5000 typ host\r\n"
           "a=candidate:3 1 tcp 1518280447 127.0.0.2 9 typ host tcptype passive\r\n"
           "a=candidate:4 1 udp 2122260223 x.local 5000 typ host\r\n")
    out = _webrtc.filter_remote_sdp(sdp)
    assert "127.0.0.2 5000" in out and "192.0.2.2" not in out and "tcp" not in out and ".local" not in out
    assert "a=candidate" not in _webrtc.strip_candidates(sdp)


async def test_upgrade_status_per_path(lk_double, http):
    d = lk_double
    d.faults.add("signal_upgrade_status", count=None, status=404, path="v1")
    with pytest.raises(aiohttp.WSServerHandshakeError) as ei:
        await http.ws_connect(f"{d.url}/rtc/v1?{v1_query()}",
                              headers={"Authorization": f"Bearer {d.token('alice', 'r')}"})
    assert ei.value.status == 404
    alice, _ = await connect(http, d, "alice")  # v0 unaffected
    await alice.ws.close()


async def test_validate_and_faults(lk_double, http):
    d = lk_double
    h = {"Authorization": f"Bearer {d.token('alice', 'r')}"}
    async with http.get(f"{d.http_url}/rtc/validate?sdk=python", headers=h) as resp:
        assert resp.status == 200 and await resp.text() == "success"
    d.faults.add("validate_status", identity="alice", count=1, status=503)
    async with http.get(f"{d.http_url}/rtc/v1/validate?{v1_query()}", headers=h) as resp:
        assert resp.status == 503
    d.signal.hang_max = 0.3
    d.faults.add("validate_hang", count=1)
    async with http.get(f"{d.http_url}/rtc/validate", headers=h) as resp:
        assert resp.status == 503
    assert [e["status"] for e in d.events.of_kind("validate")] == [200, 503, None]


async def test_regions(lk_double, http):
    d = lk_double
    h = {"Authorization": f"Bearer {d.token('alice', 'r')}"}
    async with http.get(f"{d.http_url}/settings/regions", headers=h) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body == {"regions": [{"region": d.region, "url": d.http_url, "distance": "0"}]}
    async with http.get(f"{d.http_url}/settings/regions") as resp:
        assert resp.status == 401
    d.signal.hang_max = 0.3
    d.faults.add("region_hang", count=1)
    t0 = time.monotonic()
    async with http.get(f"{d.http_url}/settings/regions", headers=h) as resp:
        assert resp.status == 503
    assert time.monotonic() - t0 >= 0.25
    assert [e["status"] for e in d.events.of_kind("region_fetch")] == [200, 401, None]


async def test_hang_is_released_on_stop(lk_double, http):
    """A held upgrade must not keep the double from stopping (no task left behind)."""
    d = lk_double
    d.faults.add("signal_upgrade_hang", count=None)
    task = asyncio.ensure_future(http.get(f"{d.http_url}/rtc?sdk=python",
                                          headers={"Authorization": f"Bearer {d.token('alice', 'r')}"}))
    await wait_event(d, "fault_fired", lambda e: e["name"] == "signal_upgrade_hang")
    t0 = time.monotonic()
    await asyncio.to_thread(d.stop_thread)
    assert time.monotonic() - t0 < 5
    assert not d.leftover_tasks
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_close_leaves_nothing_behind(lk_double, http):
    d = lk_double
    alice, _ = await connect(http, d, "alice")
    bob, _ = await connect(http, d, "bob")
    await alice.recv("offer")
    await asyncio.to_thread(d.stop_thread)
    assert d.signal.closed and not d.signal.participants and not d.signal.conns
    assert not d.signal._tasks and not d.signal._handlers
    assert_peers_closed(d)
    assert len(d.signal.peers_created) == 2
    for raw in (alice, bob):
        msg = await raw.ws.receive(timeout=5)
        while msg.type == aiohttp.WSMsgType.BINARY:
            msg = await raw.ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
