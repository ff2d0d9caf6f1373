"""Waiting on a ``livekit.rtc.Room``'s events in tests: ``watch = RoomWatch(room); await watch.wait("reconnected")``."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

#: the room events a :class:`RoomWatch` records unless told otherwise
ROOM_EVENTS = ("connection_state_changed", "reconnecting", "reconnected", "disconnected", "participant_connected",
               "participant_disconnected", "data_received", "connected")


class RoomWatch:
    """Records room events with monotonic timestamps; ``await watch.wait("reconnected")``."""

    def __init__(self, room: Any, names: tuple[str, ...] = ROOM_EVENTS) -> None:
        self.room = room
        self.events: list[tuple[float, str, tuple[Any, ...]]] = []
        self._changed = asyncio.Event()
        for name in names:
            room.on(name, self._handler(name))

    def _handler(self, name: str) -> Callable[..., None]:
        def on(*args: Any) -> None:
            self.events.append((time.monotonic(), name, args))
            self._changed.set()
        return on

    def names(self) -> list[str]:
        return [n for _, n, _ in self.events]

    def count(self, name: str) -> int:
        return sum(1 for _, n, _ in self.events if n == name)

    async def wait(self, name: str, pred: Callable[..., bool] | None = None, timeout: float = 15.0,
                   after: int = 0) -> tuple[float, tuple[Any, ...]]:
        """Wait for the first event ``name`` with index >= ``after`` (matching ``pred(*args)``)."""
        deadline = time.monotonic() + timeout
        while True:
            for t, n, args in self.events[after:]:
                if n == name and (pred is None or pred(*args)):
                    return t, args
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no room event {name!r} within {timeout}s; saw {self.names()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass
