"""A plain ``livekit.rtc.Room`` (the real Rust SDK) connects to the double over real WebRTC: v1 single-PC, v0 with
subscriber_primary true and false; data packets are relayed between participants; the double's interface policy
(loopback only, or the host's interfaces) is the one ICE runs with. Needs the private netns."""

from __future__ import annotations

import asyncio

import pytest

from lk_probe.testing import LiveKitDouble, _webrtc
from lk_probe.testing.fixtures import check_leftovers

from rtc_helpers import no_leaks, SDK, V1_DEFAULT, assert_peers_closed, clients, needs_netns, rtc, wait_event

pytestmark = [needs_netns, pytest.mark.rtc, pytest.mark.usefixtures("no_leaks")]

MODES = {
    "v1": dict(v1=True, sub_primary=True),
    "v0-subscriber-primary": dict(v1=False, sub_primary=True),
    "v0-publisher-primary": dict(v1=False, sub_primary=False),
}


@pytest.mark.parametrize("mode", list(MODES))
async def test_connect_and_relay_data(lk_double, mode):
    m = MODES[mode]
    if mode == "v0-publisher-primary" and SDK < (1, 1, 21):
        pytest.skip("livekit 1.1.2 waits for the subscriber PC even when the server says publisher-primary "
                    "(rust-sdks #955): see test_publisher_primary_old_sdk_waits_for_subscriber")
    d = lk_double
    d.signal.subscriber_primary = m["sub_primary"]
    async with clients(d) as c:
        alice, aw, took = await c.connect("alice", "room-a", v1=m["v1"])
        assert took < 5, f"connect took {took:.2f}s"
        assert alice.connection_state == rtc.ConnectionState.CONN_CONNECTED
        join = await wait_event(d, "join_sent", lambda e: e["identity"] == "alice")
        assert join["single_pc"] is m["v1"]
        assert join["subscriber_primary"] is (m["sub_primary"] and not m["v1"])
        assert alice.local_participant.sid == join["sid"]
        assert alice.name == "room-a" and (await alice.sid).startswith("RM_")
        req = await wait_event(d, "signal_request", lambda e: e["identity"] == "alice")
        assert req["path"] == ("/rtc/v1" if m["v1"] else "/rtc")
        primary = "publisher" if (m["v1"] or not m["sub_primary"]) else "subscriber"
        await wait_event(d, "pc_state", lambda e: e["identity"] == "alice" and e["role"] == primary
                         and e["state"] == "connected", timeout=5)

        bob, bw, _ = await c.connect("bob", "room-a", v1=m["v1"])
        await aw.wait("participant_connected", lambda p: p.identity == "bob")
        assert "alice" in {p.identity for p in bob.remote_participants.values()}

        got: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_data(packet) -> None:
            if not got.done():
                got.set_result(packet)

        bob.on("data_received", on_data)
        # the publisher PC of a v0 client is negotiated on first publish; the double buffers what comes early
        await alice.local_participant.publish_data(b"hello bob", reliable=True, topic="t1")
        packet = await asyncio.wait_for(got, 15)
        assert packet.data == b"hello bob" and packet.topic == "t1"
        assert packet.participant is not None and packet.participant.identity == "alice"
        ev = await wait_event(d, "data_relayed", lambda e: e["sender"] == "alice" and e["to"] == "bob")
        assert ev["label"] == "_reliable"

        # the other way round, lossy
        got2: asyncio.Future = asyncio.get_running_loop().create_future()
        alice.on("data_received", lambda p: got2.done() or got2.set_result(p))
        await bob.local_participant.publish_data(b"hi alice", reliable=False)
        packet2 = await asyncio.wait_for(got2, 15)
        assert packet2.data == b"hi alice" and packet2.participant.identity == "bob"

        await alice.disconnect()
        left = await wait_event(d, "participant_left", lambda e: e["identity"] == "alice")
        assert left["reason"] == "CLIENT_INITIATED"
        await bw.wait("participant_disconnected", lambda p: p.identity == "alice")
        assert "alice" not in d.rooms["room-a"].participants
    d.stop_thread()
    assert_peers_closed(d)


async def test_default_path_matches_sdk_version(lk_double):
    """1.1.21+ go to /rtc/v1 by default, 1.1.2 to /rtc."""
    d = lk_double
    async with clients(d) as c:
        await c.connect("carol", "room-d")
        req = await wait_event(d, "signal_request", lambda e: e["identity"] == "carol")
        assert req["path"] == ("/rtc/v1" if V1_DEFAULT else "/rtc")
        assert req["sdk"].lower() == "python"


@pytest.mark.skipif(SDK >= (1, 1, 21), reason="only livekit 1.1.2 has rust-sdks bug #955")
async def test_publisher_primary_old_sdk_waits_for_subscriber(lk_double):
    d = lk_double
    d.signal.subscriber_primary = False
    async with clients(d) as c:
        r, _ = c.new_room()
        task = asyncio.ensure_future(r.connect(d.url, d.token("old", "room-o"), rtc.RoomOptions(
            single_peer_connection=False)))
        await wait_event(d, "join_sent", lambda e: e["identity"] == "old" and not e["subscriber_primary"])
        done, _ = await asyncio.wait({task}, timeout=3)
        assert not done, "1.1.2 was expected to keep waiting for a subscriber PC"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _selected_remote_address(room: rtc.Room, timeout: float = 10.0) -> str:
    """The address of the remote (server) candidate of the client's selected ICE pair, from ``get_rtc_stats()``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        stats = await room.get_rtc_stats()
        for items in (stats.publisher_stats, stats.subscriber_stats):
            by_id, selected = {}, []
            for item in items:
                kind = item.WhichOneof("stats")
                if kind not in ("transport", "candidate_pair", "remote_candidate"):
                    continue
                wrapper = getattr(item, kind)
                body = getattr(wrapper, "candidate" if kind == "remote_candidate" else kind)
                by_id[wrapper.rtc.id] = body
                if kind == "transport" and body.selected_candidate_pair_id:
                    selected.append(body.selected_candidate_pair_id)
                elif kind == "candidate_pair" and body.nominated:
                    selected.append(wrapper.rtc.id)
            for pair_id in selected:
                pair = by_id.get(pair_id)
                remote = by_id.get(getattr(pair, "remote_candidate_id", None))
                if remote is not None and remote.address:
                    return remote.address
        assert loop.time() < deadline, f"no selected ICE pair within {timeout}s"
        await asyncio.sleep(0.1)


def _server_candidate_hosts(double: LiveKitDouble) -> set[str]:
    """The addresses of the candidates the double gathered, from the SDPs its peers sent."""
    hosts = set()
    for peer in double.signal.peers_created:
        for line in peer.pc.localDescription.sdp.splitlines():
            if line.startswith("a=candidate:"):
                hosts.add(line.split()[4])
    return hosts


@pytest.fixture
def host_network_double():
    """A double built as ``python -m lk_probe.demo --host-network`` builds it (still listening on 127.0.0.1)."""
    d = LiveKitDouble(allow_non_loopback=True).start_in_thread()
    try:
        yield d
    finally:
        d.stop_thread()
        assert_peers_closed(d)
        assert not d.signal.participants and not d.signal.conns
        assert not check_leftovers(d)


@pytest.mark.parametrize("host_network", [False, True], ids=["loopback-only", "host-network"])
async def test_interface_policy_reaches_webrtc(request, host_network):
    """``allow_non_loopback=True`` lets the double's WebRTC side gather and accept this host's interfaces; without it
    aioice gathers 127.0.0.1 only. Real ICE with the Rust SDK proves which policy the WebRTC side ran with.

    No packet may leave loopback, so the "host interface" is the private namespace's only one: ``lkd0`` with
    127.0.0.2, which aioice gathers as an ordinary interface (it leaves out only 127.0.0.1). A host-network double
    must therefore be reached on 127.0.0.2 and a loopback-only double on 127.0.0.1. (On a real machine the host
    interface would be the LAN address, and a loopback-only double would drop the client's LAN candidates, so the
    demo's ``--host-network`` could not connect.)"""
    d = request.getfixturevalue("host_network_double" if host_network else "lk_double")
    expected = "127.0.0.2" if host_network else "127.0.0.1"
    async with clients(d) as c:
        room, _, _ = await c.connect("hal", "room-h")
        await wait_event(d, "pc_state", lambda e: e["identity"] == "hal" and e["state"] == "connected", timeout=10)
        assert await _selected_remote_address(room) == expected
        assert _server_candidate_hosts(d) == {expected}
        assert _webrtc.POLICY.allow_non_loopback is host_network
    d.stop_thread()
    assert _webrtc.POLICY.allow_non_loopback is False  # a stopped double leaves the loopback-only default behind
