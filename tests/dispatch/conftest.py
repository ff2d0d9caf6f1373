"""Fixtures for the dispatching side's tests: the real livekit.api client against the server double."""

from __future__ import annotations

from typing import Any

import pytest

from lk_probe.testing import ParticipantState
from lk_probe.testing._core import new_sid


def lkapi(double: Any, **kw: Any) -> Any:
    from livekit import api

    return api.LiveKitAPI(url=kw.pop("url", double.http_url), api_key=kw.pop("api_key", double.api_key),
                          api_secret=kw.pop("api_secret", double.api_secret), **kw)


def join_agent(double: Any, room: str, identity: str) -> ParticipantState:
    """An agent participant appears in the room, as the double records a real agent's join (no media needed)."""

    def add() -> ParticipantState:
        r = double.rooms[room]
        p = ParticipantState(identity=identity, sid=new_sid("PA_"), name=identity, kind="agent")
        r.participants[identity] = p
        return p

    return double.call(add)


@pytest.fixture
def creds(lk_double: Any) -> dict[str, str]:
    return {"url": lk_double.http_url, "api_key": lk_double.api_key, "api_secret": lk_double.api_secret}
