"""A plain ``livekit.rtc.Room`` (the real Rust SDK) connects to the double over real WebRTC: v1 single-PC, v0 with
subscriber_primary true and false; data packets are relayed between participants. Needs the private netns."""

from __future__ import annotations

import asyncio

import pytest

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
