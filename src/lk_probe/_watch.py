"""The dispatch watch: after a dispatch, follow it until its agent is in the room or the answer is known otherwise.

A watch is one asyncio task with a hard bound. It looks at the dispatch (ListDispatch) and the room
(ListParticipants) with a growing pause between looks (0.2 s doubling to 2 s) and stops at the first look that
settles it, ending one ``dispatch.wait`` span with the outcome:

* ``joined``: the job's participant (or, before LiveKit names it, an agent participant) is in the room; the span
  ends at the participant's ``joined_at``;
* ``failed``: LiveKit reports the job JS_FAILED (with its error);
* ``room_gone``: the room does not exist (deleted mid-watch, or never created);
* ``deleted``: the dispatch was listed, then no longer (or carries ``deleted_at``);
* ``api_error``: the API refused the watch's calls (bad credentials, missing grants): looking again cannot help;
* ``cancelled`` / ``error``: the task was cancelled (its loop shut down), or lk_probe itself failed (reported);
* at the bound: ``state_mismatch`` when LiveKit reported a job state other than JS_PENDING while no agent participant
  was in the room (``ListDispatch`` says the job runs, the room says nobody came), ``unreachable`` when no look
  reached the API, else ``never_joined``.

The watch opens a client of its own (the caller may close theirs right after the dispatch), never raises into the
caller, and never outlives its bound: its API calls are cut at the time left, and the whole task is cancelled at the
bound plus a second at most.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from opentelemetry import context as otel_context
from opentelemetry.trace import Link, get_current_span

from . import _catalogue as c
from . import _provider
from ._errors import guard, warn_once
from ._ids import dispatch_trace_id_for, forced_ids
from ._livekit_api import Creds, classify, quiet
from ._recorder import Recorder

log = logging.getLogger("lk_probe")

FIRST_PAUSE, MAX_PAUSE = 0.2, 2.0
CALL_TIMEOUT = 5.0  # one API call at most (less when the bound is nearer)
MAX_WATCHES = 10_000  # at most this many watches at once per process; more are refused with a warning
JOB_STATES = {0: "JS_PENDING", 1: "JS_RUNNING", 2: "JS_SUCCESS", 3: "JS_FAILED"}
_STOP_CODES_ROOM = ("not_found",)

# outcome -> error.type (None: not a failure)
ERRORS = {"joined": None, "never_joined": "never_joined", "state_mismatch": "state_mismatch", "failed": "job_failed",
          "room_gone": "room_gone", "deleted": "deleted", "unreachable": "unreachable"}

_active: set[asyncio.Task] = set()
_shared: list[Recorder] = []


def _recorder() -> Recorder:
    """One Recorder holds every watch's open ``dispatch.wait`` (keyed by the watch): a Recorder per watch would make
    the stall watchdog walk thousands of them."""
    if not _shared:
        rec = Recorder(None, label="")
        rec.MAX_OPEN = MAX_WATCHES
        _shared.append(rec)
    return _shared[0]


def job_state_name(value: int) -> str:
    """A JobStatus by name (never a bare number)."""
    try:
        from livekit.protocol import agent

        return agent.JobStatus.Name(value)
    except Exception:  # noqa: BLE001 - an unknown value or no protocol package
        return JOB_STATES.get(value, f"JS_UNKNOWN_{value}")


@dataclass
class WatchResult:
    """What a watch found. ``outcome`` is one of joined, never_joined, state_mismatch, failed, room_gone, deleted,
    unreachable, api_error."""

    outcome: str
    room: str
    dispatch_id: str | None = None
    agent_name: str | None = None
    job_id: str | None = None
    job_state: str | None = None
    job_error: str | None = None
    identity: str | None = None
    joined_after_s: float | None = None
    elapsed_s: float = 0.0
    polls: int = 0
    api_calls: int = 0
    error_type: str | None = None
    message: str = ""
    listed: bool = False

    @property
    def joined(self) -> bool:
        return self.outcome == "joined"


@dataclass
class _Seen:
    """What the looks so far established."""

    dispatch_id: str | None
    agent_name: str | None
    job_id: str | None = None
    job_state: str | None = None
    job_error: str | None = None
    identity: str | None = None
    listed: bool = False
    running_seen: bool = False  # any job state other than JS_PENDING
    vanished: bool = False  # listed before, not any more
    reached: bool = False  # at least one call reached the API
    last_error: tuple[str, str] | None = None  # (error.type, message) of the last failed call
    polls: int = 0
    calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class _Settled(Exception):
    def __init__(self, outcome: str, message: str = "", error_type: str | None = None, t: int | None = None) -> None:
        super().__init__(outcome)
        self.outcome, self.message, self.error_type, self.t = outcome, message, error_type, t


class Watch:
    def __init__(self, creds: Creds, room: str, *, dispatch_id: str | None, agent_name: str | None, bound: float,
                 t0: int, parent: Any = None, origin: Any = None, source: str = "watch") -> None:
        self.creds, self.room, self.bound, self.t0, self.source = creds, room, max(float(bound), 0.0), t0, source
        self.parent = parent  # the dispatch.create span's context (same process)
        self.origin = origin  # a span context to link to (room.create, or whoever started the watch)
        self.seen = _Seen(dispatch_id, agent_name)
        self.rec = _recorder()
        self.deadline = time.monotonic() + self.bound - max(time.time_ns() - t0, 0) / 1e9
        self.deadline = max(self.deadline, time.monotonic())
        self._lk: Any = None

    # ------------------------------------------------------------------------------------------- the span
    def _attributes(self) -> dict[str, Any]:
        s = self.seen
        return {c.DISPATCH_ID: s.dispatch_id, c.AGENT_NAME: s.agent_name, c.ROOM_NAME: self.room,
                c.DISPATCH_SOURCE: self.source, c.DISPATCH_BOUND: self.bound}

    def _open_span(self) -> None:
        """Start ``dispatch.wait`` (at the dispatch call's time) as soon as we know which trace it belongs to."""
        if self.rec.is_open(self):
            return
        did = self.seen.dispatch_id
        links = None
        if self.origin is not None:
            sc = get_current_span(self.origin).get_span_context()
            links = [Link(sc)] if sc.is_valid else None
        if self.parent is not None:
            self.rec.start("dispatch.wait", self, t=self.t0, context=self.parent,
                           attributes=self._attributes())
        elif did:  # a root in the dispatch's trace (the worker's job is there too)
            with forced_ids(dispatch_trace_id_for(did), random.getrandbits(64) or 1):
                self.rec.start("dispatch.wait", self, t=self.t0, context=otel_context.Context(),
                               attributes=self._attributes(), links=links)

    def _close_span(self, r: WatchResult, t_end: int) -> None:
        if not self.rec.is_open(self):  # never learned the dispatch id: in the caller's trace
            self.rec.start("dispatch.wait", self, t=self.t0, context=self.origin,
                           attributes=self._attributes())
        attrs = {c.OUTCOME: r.outcome, c.DISPATCH_ID: r.dispatch_id, c.JOB_ID: r.job_id,
                 c.DISPATCH_JOB_STATE: r.job_state, c.DISPATCH_JOB_ERROR: r.job_error, c.AGENT_IDENTITY: r.identity,
                 c.DISPATCH_POLLS: r.polls, c.DISPATCH_API_CALLS: r.api_calls,
                 c.DISPATCH_JOINED_AFTER: r.joined_after_s, c.DISPATCH_LISTED: r.listed}
        self.rec.end(self, t=t_end, error_type=r.error_type, error_message=r.message or None,
                     attributes=attrs)

    # ------------------------------------------------------------------------------------------- the looks
    async def _call(self, fn: Any, *args: Any) -> Any:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise asyncio.TimeoutError()
        self.seen.calls += 1
        try:
            result = await asyncio.wait_for(fn(*args), min(CALL_TIMEOUT, left))
        except asyncio.TimeoutError:
            self.seen.last_error = ("timeout", "the LiveKit API did not answer in time")
            raise
        except Exception as e:
            error_type, status = classify(e)
            self.seen.last_error = (error_type, getattr(e, "message", None) or str(e) or type(e).__name__)
            if status is not None:
                self.seen.reached = True
            raise
        self.seen.reached = True
        return result

    def _api_error(self, e: BaseException) -> None:
        """A refusal that looking again cannot change ends the watch."""
        code, status = classify(e)
        if status is None:
            return  # transport: the server may come back within the bound
        if code in _STOP_CODES_ROOM:
            raise _Settled("room_gone", f"room {self.room!r} does not exist", "room_gone")
        if status < 500:
            raise _Settled("api_error", f"the LiveKit API refused the watch: {code} "
                                        f"{getattr(e, 'message', '') or ''}".strip(), code)

    async def _look(self) -> None:
        from livekit import api

        s = self.seen
        s.polls += 1
        lk = self._lk
        try:
            if s.dispatch_id:
                d = await self._call(lk.agent_dispatch.get_dispatch, s.dispatch_id, self.room)
                self._on_dispatch(d)
            else:
                ds = await self._call(lk.agent_dispatch.list_dispatch, self.room)
                self._on_dispatch(self._pick(ds))
        except _Settled:
            raise
        except asyncio.TimeoutError:
            pass
        except Exception as e:  # noqa: BLE001
            self._api_error(e)
        try:
            res = await self._call(lk.room.list_participants, api.ListParticipantsRequest(room=self.room))
        except asyncio.TimeoutError:
            return
        except Exception as e:  # noqa: BLE001
            self._api_error(e)
            return
        self._on_participants(res.participants)
        if s.vanished:
            raise _Settled("deleted", f"dispatch {s.dispatch_id} is no longer listed", "deleted")

    def _pick(self, dispatches: Iterable[Any]) -> Any:
        ds = [d for d in dispatches if not self.seen.agent_name or d.agent_name == self.seen.agent_name]
        if not ds:
            return None
        d = max(ds, key=lambda d: d.state.created_at)
        self.seen.dispatch_id = d.id
        self.seen.agent_name = self.seen.agent_name or d.agent_name
        self._open_span()
        return d

    def _on_dispatch(self, d: Any) -> None:
        s = self.seen
        if d is None:
            s.vanished = s.listed  # deleted, or its room is gone: the room's answer tells which
            return
        s.vanished = False
        s.listed = True
        s.agent_name = s.agent_name or d.agent_name or None
        if d.state.deleted_at:
            raise _Settled("deleted", f"dispatch {d.id} was deleted", "deleted")
        jobs = list(d.state.jobs)
        if not jobs:
            s.job_state = "NO_JOB"
            return
        job = max(jobs, key=lambda j: j.state.started_at)
        s.job_id = job.id
        s.job_state = job_state_name(job.state.status)
        s.identity = job.state.participant_identity or s.identity
        if s.job_state != "JS_PENDING":
            s.running_seen = True
        if s.job_state == "JS_FAILED":
            s.job_error = job.state.error or None
            raise _Settled("failed", f"LiveKit reports job {job.id} JS_FAILED: {job.state.error or 'no error'}",
                           "job_failed")

    def _on_participants(self, participants: Iterable[Any]) -> None:
        from livekit import api

        s = self.seen
        agent_kind = api.ParticipantInfo.AGENT
        for p in participants:
            if (s.identity and p.identity == s.identity) or (not s.identity and p.kind == agent_kind):
                s.identity = p.identity
                joined_ns = int(getattr(p, "joined_at_ms", 0) or 0) * 1_000_000 or int(p.joined_at or 0) * 10**9
                now = time.time_ns()
                t = joined_ns if self.t0 <= joined_ns <= now else now
                raise _Settled("joined", t=t)

    # ------------------------------------------------------------------------------------------- the run
    def _client(self) -> "_Client":
        cr = self.creds
        if not cr.url or not (cr.token or (cr.api_key and cr.api_secret)):
            raise ValueError("the LiveKit URL and an API key and secret (or a token) are needed")
        if not cr.token:
            cr = Creds(cr.url, cr.api_key, cr.api_secret, _admin_token(cr, self.room, self.bound))
        import livekit.api.agent_dispatch_service  # noqa: F401 - fails here, before a session is opened, if missing
        import livekit.api.room_service  # noqa: F401

        return _Client(_sessions.acquire(), cr)

    async def _settle(self) -> _Settled:
        pause = FIRST_PAUSE
        while True:
            try:
                await self._look()
            except _Settled as st:
                return st
            left = self.deadline - time.monotonic()
            if left <= 0:
                return self._verdict()
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, MAX_PAUSE)

    def _verdict(self) -> _Settled:
        """The outcome at the bound, from what the looks established."""
        s = self.seen
        if not s.reached:
            et, msg = s.last_error or ("unreachable", "no call was made before the bound (event loop busy)")
            return _Settled("unreachable", f"the LiveKit API at {self.creds.url} could not be reached: {msg}", et)
        if s.running_seen:
            return _Settled("state_mismatch", f"LiveKit reported job {s.job_id} {s.job_state} for "
                                              f"{self.bound:g} s while no agent participant was in the room",
                            "state_mismatch")
        return _Settled("never_joined", f"no agent participant joined within {self.bound:g} s"
                        + ("" if s.listed else " (the dispatch was never listed)"), "never_joined")

    async def run(self) -> WatchResult:
        token = quiet.set(True)
        st: _Settled | None = None
        try:
            with guard("watch.open"):
                self._open_span()
            try:
                self._lk = self._client()
            except Exception as e:  # noqa: BLE001 - a bad URL or missing credentials
                st = _Settled("api_error", f"cannot open a LiveKit API client: {e}", "error")
            if st is None:
                try:
                    st = await asyncio.wait_for(self._settle(), self.deadline - time.monotonic() + 1.0)
                except asyncio.TimeoutError:  # a call overran its cut: the bound wins
                    st = self._verdict()
                except Exception as e:  # noqa: BLE001 - lk_probe's own bug: reported, never raised to the caller
                    with guard("watch.run"):
                        raise e
                    st = _Settled("error", f"the watch failed inside lk_probe: {e!r}", "error")
        except asyncio.CancelledError:
            with guard("watch.cancelled"):
                self._close_span(self._result(_Settled("cancelled", "the watch was cancelled", c.ERR_CANCELLED)),
                                 time.time_ns())
            raise
        finally:
            quiet.reset(token)
            if self._lk is not None:
                with guard("watch.close_client"):
                    await asyncio.shield(_sessions.release())
        r = self._result(st)
        with guard("watch.close"):
            self._close_span(r, st.t or time.time_ns())
        return r

    def _result(self, st: _Settled) -> WatchResult:
        s = self.seen
        t_end = st.t or time.time_ns()
        joined_after = round((t_end - self.t0) / 1e9, 3) if st.outcome == "joined" else None
        error_type = st.error_type if st.outcome != "joined" else None
        return WatchResult(st.outcome, self.room, s.dispatch_id, s.agent_name, s.job_id, s.job_state, s.job_error,
                           s.identity, joined_after, round((time.time_ns() - self.t0) / 1e9, 3), s.polls, s.calls,
                           error_type, st.message, s.listed)


def _admin_token(cr: Creds, room: str, bound: float) -> str:
    """One token for all of a watch's calls (ListDispatch and ListParticipants both need roomAdmin on the room), with
    the claims livekit.api's AccessToken writes. Minted with PyJWT directly: AccessToken's claim conversion costs a
    millisecond or more per token, which adds up to seconds of loop time for a thousand watches."""
    import jwt

    now = int(time.time())
    claims = {"video": {"roomAdmin": True, "room": room}, "sub": "", "iss": cr.api_key, "nbf": now,
              "exp": now + int(bound) + 600}
    return jwt.encode(claims, cr.api_secret, algorithm="HS256")


class _Client:
    """The two services a watch calls, on the loop's shared session."""

    def __init__(self, session: Any, cr: Creds) -> None:
        from livekit.api.agent_dispatch_service import AgentDispatchService
        from livekit.api.room_service import RoomService

        self.agent_dispatch, self.room = (self._service(cls, session, cr) for cls in (AgentDispatchService,
                                                                                       RoomService))

    @staticmethod
    def _service(cls: Any, session: Any, cr: Creds) -> Any:
        try:
            svc = cls(session, cr.url, cr.api_key, cr.api_secret, failover=False)
        except TypeError:  # a livekit-api without region failover
            svc = cls(session, cr.url, cr.api_key, cr.api_secret)
        if cr.token:
            svc._token = cr.token
        return svc


class _Sessions:
    """One aiohttp session per event loop for all its watches (a session costs milliseconds to build), closed when
    the loop's last watch ends."""

    def __init__(self) -> None:
        self._by_loop: dict[Any, list[Any]] = {}  # loop -> [session, users]

    def acquire(self) -> Any:
        import aiohttp

        loop = asyncio.get_running_loop()
        entry = self._by_loop.get(loop)
        if entry is None or entry[0].closed:
            # no connection limit: a call queued behind others would only run into its cut (the watches space their
            # calls out themselves)
            entry = self._by_loop[loop] = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)), 0]
        entry[1] += 1
        return entry[0]

    async def release(self) -> None:
        loop = asyncio.get_running_loop()
        entry = self._by_loop.get(loop)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._by_loop[loop]
            await entry[0].close()


_sessions = _Sessions()


def start(creds: Creds, room: str, *, dispatch_id: str | None = None, agent_name: str | None = None,
          bound: float = 30.0, t0: int | None = None, parent: Any = None, origin: Any = None,
          source: str = "watch") -> "asyncio.Task[WatchResult] | None":
    """Start a watch on the running loop; None when there is no loop or too many watches run already."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        warn_once("watch:no-loop", "lk_probe: watch_dispatch() needs a running asyncio loop; not watching")
        return None
    if len(_active) >= MAX_WATCHES:
        warn_once("watch:too-many", "lk_probe: %d dispatch watches already run; not starting more", MAX_WATCHES)
        return None
    w = Watch(creds, room, dispatch_id=dispatch_id, agent_name=agent_name, bound=bound,
              t0=t0 if t0 is not None else time.time_ns(), parent=parent, origin=origin, source=source)
    task = loop.create_task(w.run(), name=f"lk_probe-watch-{dispatch_id or room}")
    _active.add(task)
    task.add_done_callback(_done)
    return task


def _done(task: "asyncio.Task[WatchResult]") -> None:
    _active.discard(task)
    if not task.cancelled() and task.exception() is not None:
        with guard("watch.task"):
            raise task.exception()  # type: ignore[misc]


def active() -> int:
    """How many watches are running in this process."""
    return len(_active)


def auto_watch(creds: Creds, room: str, *, agent_names: Iterable[str], t0: int, dispatch_id: str | None = None,
               parent: Any = None, origin: Any = None, source: str) -> None:
    """After a successful dispatch: one watch per dispatched agent when the ``dispatch_watch`` option is on."""
    bound = float(_provider.options().dispatch_watch or 0)
    if bound <= 0:
        return
    for name in agent_names if dispatch_id is None else [None]:
        start(creds, room, dispatch_id=dispatch_id, agent_name=name or None, bound=bound, t0=t0, parent=parent,
              origin=origin, source=source)


def watch_dispatch(room: str, dispatch_id: str | None = None, *, agent_name: str | None = None,
                   timeout: float = 30.0, url: str | None = None, api_key: str | None = None,
                   api_secret: str | None = None, started_at_ns: int | None = None
                   ) -> "asyncio.Task[WatchResult] | None":
    """Follow a dispatch in the background; see :func:`lk_probe.watch_dispatch`."""
    import os

    creds = Creds(url or os.environ.get("LIVEKIT_URL", ""), api_key or os.environ.get("LIVEKIT_API_KEY", ""),
                  api_secret or os.environ.get("LIVEKIT_API_SECRET", ""))
    from opentelemetry import context as ctx_mod

    return start(creds, room, dispatch_id=dispatch_id, agent_name=agent_name, bound=timeout, t0=started_at_ns,
                 origin=ctx_mod.get_current(), source="watch")
