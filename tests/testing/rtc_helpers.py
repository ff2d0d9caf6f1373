"""Helpers for the signalling / WebRTC tests: real ``livekit.rtc.Room`` clients against the double.

Tests that need real ICE run inside the private network namespace::

    python -m lk_probe.testing.netns -- python -m pytest tests/testing/test_rtc_connect.py -q

(or ``pytest --lk-netns``); outside it they skip.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import pytest

from lk_probe.testing import netns
from lk_probe.testing.rooms import ROOM_EVENTS, RoomWatch  # noqa: F401  (used by the tests through here)

rtc = pytest.importorskip("livekit.rtc")

needs_netns = pytest.mark.skipif(not netns.in_private_netns(),
                                 reason="needs the private network namespace for real ICE (libwebrtc ignores "
                                        "loopback interfaces): run under `python -m lk_probe.testing.netns -- "
                                        "python -m pytest ...` or `pytest --lk-netns`")

def sdk_version() -> tuple[int, ...]:
    import livekit.rtc.version as v

    return tuple(int(x) for x in re.findall(r"\d+", v.__version__)[:3])


SDK = sdk_version()
# livekit 1.1.2 (ffi 0.12.48) goes to v0 /rtc unless single_peer_connection=True; 1.1.21+ tries /rtc/v1 first
V1_DEFAULT = SDK >= (1, 1, 21)


def room_options(*, v1: bool | None = None, **kw: Any) -> Any:
    if v1 is not None:
        kw["single_peer_connection"] = v1
    return rtc.RoomOptions(**kw)


class Clients:
    """Creates rooms and always disconnects them (so the FFI has nothing left to tear down at exit)."""

    def __init__(self, double: Any) -> None:
        self.double = double
        self.rooms: list[Any] = []

    async def connect(self, identity: str, room: str = "r1", *, v1: bool | None = None, token: str | None = None,
                      **opts: Any) -> tuple[Any, RoomWatch, float]:
        r = rtc.Room()
        watch = RoomWatch(r)
        self.rooms.append(r)
        t0 = time.monotonic()
        await r.connect(self.double.url, token or self.double.token(identity, room),
                        room_options(v1=v1, **opts))
        return r, watch, time.monotonic() - t0

    async def connect_fails(self, identity: str, room: str = "r1", *, v1: bool | None = None,
                            **opts: Any) -> tuple[BaseException, float]:
        """Connect expecting ``rtc.ConnectError``; return it and how long the connect took."""
        r, _ = self.new_room()
        t0 = time.monotonic()
        with pytest.raises(rtc.ConnectError) as ei:
            await r.connect(self.double.url, self.double.token(identity, room), room_options(v1=v1, **opts))
        return ei.value, time.monotonic() - t0

    def new_room(self) -> tuple[Any, RoomWatch]:
        r = rtc.Room()
        self.rooms.append(r)
        return r, RoomWatch(r)

    async def close(self) -> None:
        for r in self.rooms:
            try:
                await asyncio.wait_for(r.disconnect(), 10)
            except Exception:
                pass
        self.rooms.clear()


@asynccontextmanager
async def clients(double: Any) -> AsyncIterator[Clients]:
    c = Clients(double)
    try:
        yield c
    finally:
        await c.close()


async def call(double: Any, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Run ``fn`` on the double's loop without blocking the test loop."""
    return await asyncio.to_thread(double.call, fn, *args, **kw)


async def wait_event(double: Any, kind: str, pred: Callable[[Any], bool] | None = None, timeout: float = 15.0,
                     after: int = -1) -> Any:
    return await double.events.wait_for(kind, pred, timeout, after=after)


def last_seq(double: Any) -> int:
    evs = list(double.events)
    return evs[-1].seq if evs else -1


def assert_peers_closed(double: Any) -> None:
    """After the double stopped: every aiortc peer it made is closed and none of aioice's sockets is open."""
    svc = double.signal
    for peer in svc.peers_created:
        assert peer.closed and peer.pc.connectionState == "closed", f"{peer.name} not closed"
        for t in peer._ice_transports():
            conn = t._connection
            assert not conn._protocols, f"{peer.name}: aioice sockets still open"


def own_fds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return out


@pytest.fixture
def no_leaks(lk_double: Any):
    """Stop the double after the test and check every aiortc peer and aioice socket it made is closed (the
    ``lk_double`` fixture then checks tasks, thread and port)."""
    yield lk_double
    lk_double.stop_thread()
    if getattr(lk_double, "signal", None) is not None:
        assert_peers_closed(lk_double)
        assert not lk_double.signal.participants and not lk_double.signal.conns
