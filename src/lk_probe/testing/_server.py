"""``LiveKitDouble``: the aiohttp server that hosts the protocol modules of the LiveKit server double.

Status: works and is tested with real workers (agents 1.4.6 and 1.8.9): lifecycle (async / thread), tokens, rooms,
404 + size limits, ``/agent`` worker protocol with explicit / automatic / roomConfig dispatch, parking and the four
worker faults (``_agent``), Twirp subset (``_twirp``); ``/rtc`` signalling comes from ``_signal`` when present.

The double serves one aiohttp application on one asyncio loop. Protocol modules plug in with ``setup(double, app)``:
``_agent`` (``/agent``), ``_twirp`` (``/twirp/...``) and, optionally, ``_signal`` (``/rtc``, ``/rtc/v1``). Everything
it sees and does goes into :attr:`LiveKitDouble.events`; faults are switched with :attr:`LiveKitDouble.faults`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import ipaddress
import logging
import secrets
import socket
import threading
import time
from typing import Any, Awaitable, Callable, Coroutine

from aiohttp import web

from . import _agent, _twirp
from ._core import (
    MAX_MESSAGE_SIZE,
    NODE_ID,
    PROTOCOL_VERSION,
    REGION,
    SERVER_VERSION,
    EventLog,
    Faults,
    ParticipantState,
    RoomState,
    mint_token,
)

try:
    from . import _signal
except ImportError:  # signalling is optional: the worker protocol and Twirp work without it
    _signal = None  # type: ignore[assignment]

log = logging.getLogger("lk_probe.testing")

RoomHook = Callable[[RoomState, str, "dict[str, Any] | None"], None]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _room_config_dict(room_config: Any) -> dict[str, Any] | None:
    """A token ``roomConfig`` as a camelCase dict, from a dict (either case) or a ``RoomConfiguration`` proto."""
    if room_config is None:
        return None
    if hasattr(room_config, "DESCRIPTOR"):
        from google.protobuf.json_format import MessageToDict

        return MessageToDict(room_config)
    return {_camel(k): v for k, v in dict(room_config).items()}


def participant_token(api_key: str, api_secret: str, identity: str, room: str, *, name: str = "",
                      agent: bool = False, ttl: float = 600, room_config: Any = None, **video_grants: Any) -> str:
    """A join token for ``room``: ``roomJoin`` + ``room`` + ``video_grants`` (snake_case, turned into the JWT's
    camelCase); ``agent=True`` adds the ``agent`` grant and ``kind=agent``; ``room_config`` as dict or proto."""
    video: dict[str, Any] = {"roomJoin": True, "room": room}
    if agent:
        video["agent"] = True
    video.update({_camel(k): v for k, v in video_grants.items()})
    return mint_token(api_key, api_secret, identity=identity, name=name, ttl=ttl, video=video,
                      kind="agent" if agent else None, room_config=_room_config_dict(room_config))


class LiveKitDouble:
    """A protocol-faithful LiveKit server double for tests; serves on loopback only (unless told otherwise).

    Use ``async with LiveKitDouble() as lk:`` in async code, or ``lk = LiveKitDouble().start_in_thread()`` /
    ``lk.stop_thread()`` from sync code (the ``lk_double`` pytest fixture does the latter).
    """

    max_message_size = MAX_MESSAGE_SIZE

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str = "lkp_test_key",
                 api_secret: str | None = None, allow_non_loopback: bool = False, region: str = REGION,
                 node_id: str = NODE_ID) -> None:
        if not allow_non_loopback and not _is_loopback(host):
            raise ValueError(f"LiveKitDouble refuses to listen on non-loopback host {host!r}: tests must stay on "
                             "127.0.0.1/::1; pass allow_non_loopback=True if you really mean it")
        self.host = host
        self.port = port
        # also what the WebRTC side of signalling may gather and accept: this host's interfaces, not only loopback
        self.allow_non_loopback = allow_non_loopback
        self.api_key = api_key
        self.api_secret = api_secret or secrets.token_urlsafe(32)
        self.region = region
        self.node_id = node_id
        self.version = SERVER_VERSION
        self.protocol = PROTOCOL_VERSION
        self.events = EventLog()
        self._fault_docs: dict[str, str] = {}
        self.faults = Faults(self.events, lambda: set(self._fault_docs))
        # known before start() so faults can be armed first; setup() of each module registers them again
        self.register_faults(_agent.FAULTS)
        if _signal is not None:
            self.register_faults(_signal.FAULTS)
        self.rooms: dict[str, RoomState] = {}
        self.signal: _signal.SignalService | None = None  # the signalling service, while serving with _signal
        self.agent: _agent.AgentService | None = None  # the worker-protocol service, set by _agent.setup
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started_at = 0.0
        self.leftover_tasks: list[asyncio.Task[Any]] = []  # tasks that survived stop() (see stop_thread)
        self._room_hooks: list[RoomHook] = []
        self._stop_hooks: list[Callable[[], Awaitable[None]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop_thread_id: int | None = None
        self._stopping = False
        self.app: web.Application | None = None

    # ---------------------------------------------------------------------------------------------- addresses
    @property
    def url(self) -> str:
        return f"ws://{self._host_for_url()}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._host_for_url()}:{self.port}"

    def _host_for_url(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def __repr__(self) -> str:
        return f"<LiveKitDouble {self.url} rooms={len(self.rooms)} events={len(self.events)}>"

    # ---------------------------------------------------------------------------------------------- faults
    def register_faults(self, faults: dict[str, str]) -> None:
        """Make fault names known (with a one-line description); :meth:`Faults.add` rejects unknown names."""
        self._fault_docs.update(faults)

    @property
    def fault_descriptions(self) -> dict[str, str]:
        return dict(sorted(self._fault_docs.items()))

    # ---------------------------------------------------------------------------------------------- lifecycle
    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_message_size, middlewares=[self._not_found_middleware])
        _agent.setup(self, app)
        _twirp.setup(self, app)
        if _signal is not None:
            self.signal = _signal.setup(self, app)
        return app

    @web.middleware
    async def _not_found_middleware(self, request: web.Request,
                                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                                    ) -> web.StreamResponse:
        exc = request.match_info.http_exception
        if exc is not None:  # no route matched
            self.events.record(f"http_{exc.status}", method=request.method, path=request.path,
                               remote=request.remote)
            if exc.status == 404:
                text = (f"404: the LiveKit server double has no endpoint {request.method} {request.path} "
                        "(it serves /agent, /twirp/livekit.RoomService/*, /twirp/livekit.AgentDispatchService/*"
                        + (", /rtc, /rtc/v1" if self.signal is not None else "") + ")")
                return web.Response(status=404, text=text)
            return web.Response(status=exc.status, text=f"{exc.status}: {exc.reason} for {request.method} "
                                                        f"{request.path}")
        return await handler(request)

    async def start(self) -> "LiveKitDouble":
        if self._runner is not None:
            raise RuntimeError("LiveKitDouble already started")
        self.loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        self._stopping = False
        self.app = self._build_app()
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=False)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.port = sock.getsockname()[1]
        self.started_at = time.time()
        self.events.record("double_started", url=self.url, signal=self.signal is not None)
        log.info("LiveKit double serving on %s", self.url)
        return self

    async def stop(self) -> None:
        """Close every connection (workers, signal sessions), stop serving and cancel the double's own tasks."""
        if self._runner is None:
            return
        self._stopping = True
        for hook in reversed(self._stop_hooks):
            try:
                await hook()
            except Exception:  # one module's cleanup failing must not keep the port open
                log.exception("LiveKit double: stop hook failed")
        runner, self._runner = self._runner, None
        await runner.cleanup()
        await self._cancel_tasks(set(self._tasks))
        self.events.record("double_stopped")

    async def _cancel_tasks(self, tasks: set[asyncio.Task[Any]], timeout: float = 5.0) -> None:
        me = asyncio.current_task()
        tasks = {t for t in tasks if t is not me and not t.done()}
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def __aenter__(self) -> "LiveKitDouble":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def start_in_thread(self, timeout: float = 10.0) -> "LiveKitDouble":
        """Serve on an own event loop in a daemon thread; returns once the port is listening."""
        if self._thread is not None:
            raise RuntimeError("LiveKitDouble already runs in a thread")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as e:  # report a failed start (port in use ...) to the caller
                ready.set_exception(e)
                loop.close()
                return
            ready.set_result(None)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"lk-double-{id(self):x}", daemon=True)
        self._thread.start()
        try:
            ready.result(timeout)
        except BaseException:
            self._thread.join(timeout)
            self._thread = None
            raise
        return self

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Stop serving, cancel and await every task on the double's loop, stop the loop and join the thread.

        Tasks that are still pending after ``timeout`` (they swallowed the cancellation) are kept in
        :attr:`leftover_tasks`; the ``lk_double`` fixture reports them as a leak.
        """
        thread, loop = self._thread, self.loop
        if thread is None or loop is None:
            return

        async def shutdown() -> None:
            await self.stop()
            others = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
            await self._cancel_tasks(others, timeout=max(0.5, timeout / 2))
            self.leftover_tasks = [t for t in others if not t.done()]

        if thread.is_alive() and loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(shutdown(), loop)
            try:
                fut.result(timeout)
            except concurrent.futures.TimeoutError:
                self.events.record("stop_timeout", timeout=timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            if not self.leftover_tasks:
                loop.close()
            self._thread = None

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    # ---------------------------------------------------------------------------------------------- loop helpers
    def on_loop(self) -> bool:
        return self._loop_thread_id is not None and threading.get_ident() == self._loop_thread_id

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10, **kw: Any) -> Any:
        """Run ``fn(*args, **kw)`` (sync or coroutine function) on the double's loop from any thread; return its result.

        A returned coroutine is awaited; a returned task or future is handed back as it is."""
        loop = self.loop
        if loop is None or loop.is_closed():
            raise RuntimeError("LiveKitDouble is not running")
        if self.on_loop():
            if inspect.iscoroutinefunction(fn):
                raise RuntimeError("LiveKitDouble.call() of a coroutine function from the double's own loop would "
                                   "deadlock; await it instead")
            return fn(*args, **kw)

        async def run() -> Any:
            result = fn(*args, **kw)
            if inspect.iscoroutine(result):  # not tasks/futures: returning a task must not wait for it
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Start a task on the double's loop, keep a reference (so it is not garbage-collected) and log failures.

        Must be called on the loop. Tasks still running at :meth:`stop` are cancelled.
        """
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.events.record("internal_error", task=task.get_name(), error=repr(exc))
            log.error("LiveKit double task %s failed", task.get_name(), exc_info=exc)

    def add_room_hook(self, hook: RoomHook) -> None:
        """``hook(room, created_by, room_config)`` runs on the loop whenever :meth:`ensure_room` creates a room."""
        self._room_hooks.append(hook)

    def add_stop_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        """``await hook()`` runs first thing in :meth:`stop` (close connections before the runner goes away)."""
        self._stop_hooks.append(hook)

    # ---------------------------------------------------------------------------------------------- tokens & rooms
    def token(self, identity: str, room: str, *, name: str = "", agent: bool = False, ttl: float = 600,
              room_config: Any = None, **video_grants: Any) -> str:
        """A participant token for ``room`` signed with the double's key; ``video_grants`` in snake_case
        (``can_publish=False``, ``room_admin=True``, ...). ``agent=True`` makes an agent participant."""
        return participant_token(self.api_key, self.api_secret, identity, room, name=name, agent=agent, ttl=ttl,
                                 room_config=room_config, **video_grants)

    def ensure_room(self, name: str, *, created_by: str = "api", room_config: Any = None, **kw: Any) -> RoomState:
        """Return the room ``name``, creating it if needed (on the double's loop; other threads are routed there).

        ``created_by="join"`` is what signalling uses when a participant's join creates the room: agents from the
        token's ``room_config`` (``{"agents": [{"agentName": ..., "metadata": ...}]}``) are dispatched, or, when there
        are none, automatic dispatch to workers registered without an agent name. ``created_by="api"`` (Twirp
        CreateRoom) dispatches only the agents passed in ``agents=[...]``. ``kw``: ``metadata``, ``empty_timeout``,
        ``max_participants``, ``agents`` (list of RoomAgentDispatch-like dicts).
        """
        if not self.on_loop() and self.loop is not None and self.loop.is_running():
            return self.call(self.ensure_room, name, created_by=created_by, room_config=room_config, **kw)
        if created_by not in ("api", "join"):
            raise ValueError(f"created_by must be 'api' or 'join', not {created_by!r}")
        room = self.rooms.get(name)
        if room is not None:
            return room
        cfg = _room_config_dict(room_config)
        fields: dict[str, Any] = {k: kw[k] for k in ("metadata", "empty_timeout", "max_participants") if k in kw}
        if cfg:
            for src, dst in (("metadata", "metadata"), ("emptyTimeout", "empty_timeout"),
                             ("maxParticipants", "max_participants")):
                if src in cfg and dst not in fields:
                    fields[dst] = cfg[src]
        agents = [{_camel(k): v for k, v in a.items()} for a in kw.get("agents") or (cfg or {}).get("agents") or []]
        unknown = set(kw) - {"metadata", "empty_timeout", "max_participants", "agents"}
        if unknown:
            raise TypeError(f"ensure_room() got unexpected keyword arguments {sorted(unknown)}")
        room = RoomState(name=name, agents=agents, **fields)
        self.rooms[name] = room
        self.events.record("room_created", room=name, room_sid=room.sid, created_by=created_by,
                           agents=[a.get("agentName", "") for a in agents])
        for hook in list(self._room_hooks):
            try:
                hook(room, created_by, cfg)
            except Exception as e:
                self.events.record("internal_error", where="room_hook", error=repr(e))
                log.exception("LiveKit double: room hook failed")
        return room

    async def delete_room(self, name: str, *, reason: str = "room deleted") -> bool:
        """Disconnect everyone (``session.leave`` when signalling owns the participant), end the room's jobs and
        dispatches, forget the room. Returns False if there was no such room."""
        room = self.rooms.pop(name, None)
        if room is None:
            return False
        for p in list(room.participants.values()):
            await self.remove_participant(room, p, reason=reason)
        if self.agent is not None:
            await self.agent.room_deleted(name)
        self.events.record("room_deleted", room=name, room_sid=room.sid, reason=reason)
        return True

    def create_dispatch(self, room: str, agent_name: str = "", metadata: str = "", **kw: Any) -> Any:
        """Explicit dispatch like Twirp CreateDispatch (creates the room if needed); returns the dispatch record
        (``.id``, ``.jobs[0].job.id``). Callable from any thread."""
        if not self.on_loop():
            return self.call(self.create_dispatch, room, agent_name, metadata, **kw)
        return self.agent.create_dispatch(room, agent_name, metadata, **kw)

    async def terminate_job(self, job_id: str, reason: str = "terminated by test") -> bool:
        """Send JobTermination for ``job_id`` (use ``double.call(double.terminate_job, job_id)`` from a test)."""
        return await self.agent.terminate_job(job_id, reason)

    async def remove_participant(self, room: RoomState, participant: ParticipantState, *,
                                 reason: str = "removed") -> None:
        room.participants.pop(participant.identity, None)
        if participant.session is not None:
            try:
                await participant.session.leave(action="DISCONNECT", reason=reason)
            except Exception as e:
                self.events.record("internal_error", where="session.leave", error=repr(e))
        self.events.record("participant_removed", room=room.name, identity=participant.identity,
                           sid=participant.sid, reason=reason)


def port_is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port (the fixture's leak check uses it)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
