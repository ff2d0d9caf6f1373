"""Fixtures for the server double's own tests (the double's public fixtures come from lk_probe.testing.fixtures)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from lk_probe.testing.fixtures import agent_worker, lk_double  # noqa: F401  (re-exported fixtures)

AGENTS = Path(__file__).parent / "agents"
MARKER_AGENT = AGENTS / "marker_agent.py"


class Markers:
    """JSON lines written by tests/testing/agents/*.py (env LKP_MARKERS); waited on with a deadline, not a sleep."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    @property
    def env(self) -> dict[str, str]:
        return {"LKP_MARKERS": str(self.path)}

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def wait(self, what: str, predicate: Callable[[dict[str, Any]], bool] | None = None,
             timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.all():
                if m["what"] == what and (predicate is None or predicate(m)):
                    return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what!r} marker within {timeout}s; markers: {self.all()}")
            time.sleep(0.05)  # polling a file with a deadline


@pytest.fixture
def markers(tmp_path: Path) -> Markers:
    return Markers(tmp_path / "markers.jsonl")


class FakeWorker:
    """A hand-driven /agent client (aiohttp) for protocol-level tests that need no real worker."""

    def __init__(self, double: Any, agent_name: str = "fake") -> None:
        self.double, self.agent_name = double, agent_name
        self.session: Any = None
        self.ws: Any = None
        self.id = ""

    def worker_token(self) -> str:
        from livekit import api

        return api.AccessToken(self.double.api_key, self.double.api_secret).with_grants(
            api.VideoGrants(agent=True)).to_jwt()

    async def connect(self, register: bool = True) -> "FakeWorker":
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.double.url + "/agent",
                                                headers={"Authorization": f"Bearer {self.worker_token()}"},
                                                max_msg_size=0)
        if register:
            from livekit.protocol import agent

            m = agent.WorkerMessage()
            m.register.type = agent.JT_ROOM
            m.register.agent_name = self.agent_name
            m.register.version = "fake"
            await self.send(m)
            first = await self.recv()
            assert first.WhichOneof("message") == "register", first
            self.id = first.register.worker_id
        return self

    async def send(self, msg: Any) -> None:
        await self.ws.send_bytes(msg.SerializeToString())

    async def recv(self, timeout: float = 5.0) -> Any:
        import asyncio

        import aiohttp
        from livekit.protocol import agent

        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise ConnectionError(f"expected a binary message, got {msg.type} {msg.data!r} {msg.extra!r}")
        return agent.ServerMessage.FromString(msg.data)

    async def recv_kind(self, kind: str, timeout: float = 5.0) -> Any:
        """Next server message of ``kind`` (skipping others)."""
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            m = await self.recv(max(0.01, deadline - loop.time()))
            if m.WhichOneof("message") == kind:
                return getattr(m, kind)

    async def ping(self, timeout: float = 5.0) -> Any:
        """Send WorkerPing, return the WorkerPong: proves the double still serves this connection."""
        import time as _time

        from livekit.protocol import agent

        ts = int(_time.time() * 1000)
        await self.send(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=ts)))
        pong = await self.recv_kind("pong", timeout)
        assert pong.last_timestamp == ts
        return pong

    async def answer(self, job_id: str, available: bool = True, **kw: Any) -> None:
        from livekit.protocol import agent

        await self.send(agent.WorkerMessage(availability=agent.AvailabilityResponse(job_id=job_id,
                                                                                    available=available, **kw)))

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()


@pytest.fixture
def fake_worker_cls() -> type[FakeWorker]:
    return FakeWorker


@pytest.fixture
async def fake_worker(lk_double: Any) -> Any:
    made: list[FakeWorker] = []

    async def make(agent_name: str = "fake", register: bool = True) -> FakeWorker:
        w = FakeWorker(lk_double, agent_name)
        made.append(w)
        return await w.connect(register)

    yield make
    for w in made:
        await w.close()
