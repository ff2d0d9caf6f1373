"""Bad input to the double: each gets a clear error answer, and a second client keeps being served."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from livekit.protocol import agent

from lk_probe.testing import LiveKitDouble, mint_token
from lk_probe.testing.fixtures import check_leftovers



async def closed_with(w: Any, timeout: float = 5.0) -> tuple[int | None, str]:
    """Read until the server closes the WebSocket; return (close code, reason)."""
    while True:
        msg = await asyncio.wait_for(w.ws.receive(), timeout)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return w.ws.close_code, str(msg.extra or "")


async def test_malformed_protobuf_closes_only_that_worker(lk_double, fake_worker):
    good = await fake_worker("steady")
    bad = await fake_worker("broken")
    await bad.ws.send_bytes(b"\x0a\xff\xff\xff\xff")  # field 1 (register), length far beyond the data
    code, reason = await closed_with(bad)
    assert code == 1007 and "malformed WorkerMessage" in reason
    ev = lk_double.events.of_kind("bad_message", lambda e: e["worker"] == bad.id)
    assert ev and "malformed" in ev[0]["reason"]
    lk_double.events.wait_for_sync("worker_disconnected", lambda e: e["worker"] == bad.id)
    # the other worker is still served: ping/pong and a dispatch offer
    await good.ping()
    d = lk_double.create_dispatch("room-steady", "steady")
    req = await good.recv_kind("availability")
    assert req.job.id == d.jobs[0].job.id


async def test_garbage_before_register_and_text_frames(lk_double, fake_worker):
    good = await fake_worker("steady")
    first = await fake_worker("x", register=False)
    await first.send(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=1)))
    code, reason = await closed_with(first)
    assert code == 1007 and "first message must be register" in reason
    text = await fake_worker("y")
    await text.ws.send_str("hello")
    code, reason = await closed_with(text)
    assert code == 1003 and "binary protobuf" in reason
    assert len(lk_double.events.of_kind("bad_message")) == 2
    await good.ping()


@pytest.mark.parametrize("case", ["wrong_secret", "expired", "no_agent_grant", "missing", "unknown_key"])
async def test_bad_worker_tokens_are_rejected_with_401(lk_double, fake_worker, case):
    good = await fake_worker("steady")
    d = lk_double
    tokens = {
        "wrong_secret": mint_token(d.api_key, "not-the-secret-of-this-double-0123456789", video={"agent": True}),
        "expired": jwt.encode({"iss": d.api_key, "sub": "", "nbf": int(time.time()) - 600,
                               "exp": int(time.time()) - 60, "video": {"agent": True}}, d.api_secret),
        "no_agent_grant": mint_token(d.api_key, d.api_secret, video={"roomJoin": True}),
        "missing": None,
        "unknown_key": mint_token("someone-else", d.api_secret, video={"agent": True}),
    }
    reasons = {"wrong_secret": "invalid token", "expired": "token expired", "no_agent_grant": "video.agent",
               "missing": "missing Authorization", "unknown_key": "unknown API key"}
    headers = {"Authorization": f"Bearer {tokens[case]}"} if tokens[case] else {}
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await s.ws_connect(d.url + "/agent", headers=headers)
        assert exc.value.status == 401
        async with s.get(d.http_url + "/agent", headers=headers) as r:  # the same answer, with its reason
            assert r.status == 401
            assert reasons[case] in await r.text()
    ev = d.events.of_kind("auth_rejected")
    assert ev and reasons[case] in ev[-1]["reason"]
    await good.ping()


async def test_unknown_path_gives_404_with_a_clear_body(lk_double, fake_worker):
    good = await fake_worker("steady")
    async with aiohttp.ClientSession() as s:
        async with s.get(lk_double.http_url + "/no/such/thing") as r:
            assert r.status == 404
            body = await r.text()
            assert "no endpoint GET /no/such/thing" in body and "/agent" in body
        async with s.post(lk_double.http_url + "/twirp/livekit.RoomService/MakeCoffee", data=b"") as r:
            assert r.status == 404
            err = json.loads(await r.text())
            assert err["code"] == "bad_route" and "MakeCoffee" in err["msg"]
    paths = [e["path"] for e in lk_double.events.of_kind("http_404")]
    assert paths == ["/no/such/thing", "/twirp/livekit.RoomService/MakeCoffee"]
    await good.ping()


async def test_oversized_ws_message_is_refused_with_1009(lk_double, fake_worker):
    good = await fake_worker("steady")
    big = await fake_worker("big")
    filler = b"x" * (LiveKitDouble.max_message_size + 1)
    msg = agent.WorkerMessage(migrate_job=agent.MigrateJobRequest(job_ids=[filler.decode()]))
    ping_during = asyncio.ensure_future(good.ping())
    await big.send(msg)
    code, _ = await closed_with(big)
    assert code == 1009
    await ping_during
    ev = lk_double.events.wait_for_sync("bad_message", lambda e: e["worker"] == big.id)
    assert "websocket error" in ev["reason"]
    await good.ping()


async def test_oversized_http_body_is_refused_with_413(lk_double, fake_worker):
    good = await fake_worker("steady")
    token = lk_double.token("admin", "r", room_admin=True, room_create=True)
    async with aiohttp.ClientSession() as s:
        async with s.post(lk_double.http_url + "/twirp/livekit.RoomService/CreateRoom",
                          data=b"\0" * (LiveKitDouble.max_message_size + 1),
                          headers={"Authorization": f"Bearer {token}",
                                   "Content-Type": "application/protobuf"}) as r:
            assert r.status == 413
            err = json.loads(await r.text())
            assert err["code"] == "resource_exhausted" and "larger than" in err["msg"]
    await good.ping()


def test_double_refuses_non_loopback_hosts():
    with pytest.raises(ValueError, match="non-loopback"):
        LiveKitDouble(host="0.0.0.0")
    assert LiveKitDouble(host="0.0.0.0", allow_non_loopback=True).host == "0.0.0.0"  # not started


# ------------------------------------------------------------------------------------------------ fuzzing


@pytest.fixture(scope="module")
def fuzz_double():
    double = LiveKitDouble().start_in_thread()
    yield double
    double.stop_thread()
    assert check_leftovers(double) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(st.binary(max_size=300),
                         st.builds(lambda m: m.SerializeToString(),
                                   st.sampled_from([agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(
                                       status=7, load=-3.0)),
                                       agent.WorkerMessage(update_job=agent.UpdateJobStatus(job_id="AJ_x", status=99)),
                                       agent.WorkerMessage(availability=agent.AvailabilityResponse(job_id="nope")),
                                       agent.WorkerMessage()]))))
def test_fuzzed_worker_messages_never_break_the_double(fuzz_double, fake_worker_cls, payload):
    async def run() -> None:
        w = await fake_worker_cls(fuzz_double, "fuzz").connect()
        try:
            await w.ws.send_bytes(payload)
            try:
                await w.ping(timeout=5)  # still served ...
            except ConnectionError:
                bad = fuzz_double.events.of_kind("bad_message", lambda e: e["worker"] == w.id)
                assert bad, "the double closed the connection without saying why"  # ... or told why it closed
        finally:
            await w.close()
        other = await fake_worker_cls(fuzz_double, "fuzz-check").connect()  # and new workers still register
        await other.ping()
        await other.close()

    asyncio.run(run())
    assert not fuzz_double.events.of_kind("internal_error")
