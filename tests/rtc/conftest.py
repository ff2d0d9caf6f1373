"""Helpers for the engine-phase tests: a real livekit.rtc.Room against the double, spans captured by capspans."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import pytest

from lk_probe.testing.rooms import RoomWatch


def rtc_version() -> tuple[int, ...]:
    from livekit.rtc import __version__

    return tuple(int(x) for x in __version__.split(".")[:3])


V112 = rtc_version() < (1, 1, 3)  # 0-based attempts, v0 by default, no `disconnected` after giving up
# an older livekit than lk_probe supports (a livekit-agents release may pin one): a phase it cannot give is stated as
# such (the test skips naming what its records did give), not reported as a failure
BELOW_RANGE = rtc_version() < (1, 1)


def codes(spans: Any) -> list[str]:
    """The codes of the findings lk_probe's diagnosis gives these spans, most specific first."""
    from lk_probe.findings import diagnose

    return [f.code for f in diagnose(spans)]


async def wait_spans(capspans: Any, pred: Callable[[Any], bool], timeout: float = 30.0) -> Any:
    """Poll the captured spans until ``pred(spans)`` is truthy; return the SpanSet."""
    deadline = time.monotonic() + timeout
    while True:
        spans = capspans.spans
        if pred(spans):
            return spans
        if time.monotonic() > deadline:
            if BELOW_RANGE:
                from livekit.rtc import __version__

                pytest.skip(f"livekit {__version__} is older than lk_probe supports; its records gave only "
                            f"{', '.join(sorted({s.name for s in spans})) or 'no phase'}")
            raise TimeoutError("spans never matched; have:\n" + spans.summary())
        await asyncio.sleep(0.05)


async def signal(double: Any, op: str, *args: Any, **kw: Any) -> Any:
    """Run a SignalService action (send_leave, abort_signal, lose_node) on the double's loop without blocking ours."""
    return await asyncio.to_thread(double.call, getattr(double.signal, op), *args, **kw)


@pytest.fixture
async def connected(lk_double, capspans):
    """Factory: connect a Room as ``identity``; disconnects every room at teardown."""
    from livekit import rtc

    rooms = []

    async def connect(identity: str = "agent-1", room: str = "phases", **options: Any):
        r = rtc.Room()
        events = RoomWatch(r)
        rooms.append(r)
        opts = rtc.RoomOptions(**options) if options else rtc.RoomOptions()
        await r.connect(lk_double.url, lk_double.token(identity, room), options=opts)
        return r, events

    yield connect
    for r in rooms:
        try:
            await asyncio.wait_for(r.disconnect(), 10)
        except Exception:  # noqa: BLE001 - teardown of a room a fault already closed
            pass
