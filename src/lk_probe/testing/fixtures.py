"""pytest fixtures for the LiveKit server double: ``lk_double`` and ``agent_worker``.

``lk_double`` starts a :class:`~lk_probe.testing.LiveKitDouble` in a thread, yields it and always stops it; then it
fails the test if anything was left behind (a task on the double's loop, its thread, its listening socket, or a
process of an :class:`~lk_probe.testing.AgentWorker` pointed at it). With ``LIVEKIT_URL``, ``LIVEKIT_API_KEY`` and
``LIVEKIT_API_SECRET`` all set it yields a :class:`RealServer` instead, and fault / event calls skip the test.

``agent_worker(agent_file, **kw)`` starts an AgentWorker against ``lk_double`` (kw as for AgentWorker) and stops
every worker it started at teardown.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest

from ._server import LiveKitDouble, participant_token, port_is_listening
from ._worker import AgentWorker, live_workers

_ENV = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")


def _skip(what: str) -> Any:
    pytest.skip(f"{what} needs the lk_probe double; LIVEKIT_URL points at a real server")


class _SkippingFaults:
    def add(self, name: str, *args: Any, **kw: Any) -> Any:
        return _skip(name)

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **kw: _skip(f"faults.{name}")


class _SkippingEvents:
    def wait_for(self, kind: str, *args: Any, **kw: Any) -> Any:
        return _skip(f"waiting for the {kind!r} event")

    def wait_for_sync(self, kind: str, *args: Any, **kw: Any) -> Any:
        return _skip(f"waiting for the {kind!r} event")

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **kw: _skip(f"events.{name}")


class RealServer:
    """Stands in for the double when the environment points at a real LiveKit server: same url / api_key /
    api_secret / token() surface; faults and events skip the test."""

    is_double = False

    def __init__(self, url: str, api_key: str, api_secret: str) -> None:
        self.url, self.api_key, self.api_secret = url, api_key, api_secret
        self.faults = _SkippingFaults()
        self.events = _SkippingEvents()
        self.signal = None

    @property
    def http_url(self) -> str:
        return "http" + self.url[2:] if self.url.startswith("ws") else self.url

    def token(self, identity: str, room: str, *, name: str = "", agent: bool = False, ttl: float = 600,
              room_config: Any = None, **video_grants: Any) -> str:
        return participant_token(self.api_key, self.api_secret, identity, room, name=name, agent=agent, ttl=ttl,
                                 room_config=room_config, **video_grants)

    def __repr__(self) -> str:
        return f"<RealServer {self.url}>"


def real_server_from_env() -> RealServer | None:
    if all(os.environ.get(k) for k in _ENV):
        return RealServer(*(os.environ[k] for k in _ENV))
    return None


def check_leftovers(double: LiveKitDouble, workers: Iterable[AgentWorker] = ()) -> list[str]:
    """What a stopped double (and the given workers) left behind; empty when clean."""
    problems: list[str] = []
    for t in double.leftover_tasks:
        problems.append(f"task {t.get_name()} ({t.get_coro()!r}) still pending on the double's loop after stop "
                        "(it swallowed its cancellation)")
    loop = double.loop
    if loop is not None and not loop.is_closed() and not loop.is_running():
        pending = [t for t in asyncio.all_tasks(loop) if not t.done() and t not in double.leftover_tasks]
        for t in pending:
            problems.append(f"task {t.get_name()} ({t.get_coro()!r}) still pending on the double's loop")
    thread = double.thread
    if thread is not None and thread.is_alive():
        problems.append(f"the double's thread {thread.name} is still alive")
    if double.port and port_is_listening(double.host, double.port):
        problems.append(f"something still accepts connections on {double.host}:{double.port}")
    for w in workers:
        pids = w.alive_pids()
        if pids:
            problems.append(f"{w!r}: processes still alive: {pids}")
    return problems


@pytest.fixture
def lk_double() -> Iterator[LiveKitDouble | RealServer]:
    """A LiveKit server double serving on 127.0.0.1 (or a RealServer from LIVEKIT_URL/_API_KEY/_API_SECRET)."""
    real = real_server_from_env()
    if real is not None:
        yield real
        return
    double = LiveKitDouble().start_in_thread()
    try:
        yield double
    finally:
        unstopped = [w for w in live_workers() if w.double is double]
        problems = [f"{w!r} was started but not stopped (use the agent_worker fixture or AgentWorker.stop())"
                    for w in unstopped]
        for w in unstopped:
            w.stop()
        double.stop_thread()
        problems += check_leftovers(double, unstopped)
        if problems:
            pytest.fail("lk_double left things behind:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def agent_worker(lk_double: Any) -> Iterator[Callable[..., AgentWorker]]:
    """Factory: ``agent_worker(agent_file, agent_name="x", env={...})`` starts a real worker against ``lk_double``."""
    started: list[AgentWorker] = []

    def start(agent_file: str | os.PathLike[str], **kw: Any) -> AgentWorker:
        target = kw.pop("double_or_url", lk_double if isinstance(lk_double, LiveKitDouble) else lk_double.url)
        if not isinstance(target, LiveKitDouble):
            kw.setdefault("api_key", lk_double.api_key)
            kw.setdefault("api_secret", lk_double.api_secret)
        w = AgentWorker(Path(agent_file), target, **kw)
        started.append(w)
        return w.start()

    yield start
    leaks = []
    for w in started:
        w.stop(w.stop_timeout)
        pids = w.alive_pids()
        if pids:
            leaks.append(f"{w!r}: processes still alive after stop: {pids}")
    if leaks:
        pytest.fail("agent_worker left processes behind:\n  " + "\n  ".join(leaks), pytrace=False)
