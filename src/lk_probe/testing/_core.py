"""Shared core of the LiveKit server double: event log, fault registry, tokens, room state, what the server reports
about itself, and :class:`ServerDouble`, the double as its protocol modules see it.

The protocol parts plug in as modules with a ``setup(double, app)`` function:
``_agent`` (worker protocol, dispatch), ``_twirp`` (AgentDispatchService / RoomService), ``_signal`` (/rtc, /rtc/v1,
validate, regions, WebRTC through aiortc).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

import jwt
from livekit.protocol import models

# --------------------------------------------------------------------------------------------------------
# what the double reports about itself (defaults of LiveKitDouble; every protocol module reads them from the double)

SERVER_VERSION = "1.9.0-lkp-double"  # RegisterWorkerResponse / JoinResponse / ReconnectResponse server version
PROTOCOL_VERSION = 16
REGION = "lkp-double"
NODE_ID = "ND_double"
MAX_MESSAGE_SIZE = 1 << 20  # 1 MiB: WS messages and HTTP bodies above this are refused (1009 / 413)

# --------------------------------------------------------------------------------------------------------
# event log


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str
    t: float  # time.time() when the double saw or did it
    data: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


class EventLog:
    """Everything the double saw and did, in order. Thread-safe; tests wait on events, never on sleeps."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._listeners: list[Callable[[Event], None]] = []

    def record(self, kind: str, **data: Any) -> Event:
        with self._cond:
            ev = Event(next(self._seq), kind, time.time(), data)
            self._events.append(ev)
            self._cond.notify_all()
        for fn in list(self._listeners):
            try:
                fn(ev)
            except Exception:  # a listener's bug must not stop the double
                pass
        return ev

    def subscribe(self, fn: Callable[[Event], None]) -> None:
        self._listeners.append(fn)

    def of_kind(self, kind: str, predicate: Callable[[Event], bool] | None = None) -> list[Event]:
        with self._cond:
            return [e for e in self._events if e.kind == kind and (predicate is None or predicate(e))]

    def __iter__(self):
        with self._cond:
            return iter(list(self._events))

    def __len__(self) -> int:
        with self._cond:
            return len(self._events)

    def wait_for_sync(self, kind: str, predicate: Callable[[Event], bool] | None = None, timeout: float = 10.0,
                      *, after: int = -1) -> Event:
        """Block until an event of ``kind`` (matching ``predicate``, with ``seq > after``) exists; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self._events:
                    if e.seq > after and e.kind == kind and (predicate is None or predicate(e)):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = ", ".join(sorted({e.kind for e in self._events}))
                    raise TimeoutError(f"no {kind!r} event within {timeout}s (kinds seen: {seen})")
                self._cond.wait(left)

    async def wait_for(self, kind: str, predicate: Callable[[Event], bool] | None = None, timeout: float = 10.0,
                       *, after: int = -1) -> Event:
        return await asyncio.to_thread(self.wait_for_sync, kind, predicate, timeout, after=after)


# --------------------------------------------------------------------------------------------------------
# faults


@dataclass
class Fault:
    """An injected fault. ``count`` None = always; otherwise it fires that many times, then is spent."""

    name: str
    identity: str | None = None
    count: int | None = 1
    params: dict[str, Any] = field(default_factory=dict)
    fired: int = 0
    enabled: bool = True

    def matches(self, name: str, identity: str | None) -> bool:
        if not self.enabled or self.name != name:
            return False
        if self.count is not None and self.fired >= self.count:
            return False
        return self.identity is None or self.identity == identity

    def __getattr__(self, key: str) -> Any:  # fault.delay etc.
        try:
            return self.__dict__["params"][key]
        except KeyError:
            raise AttributeError(key) from None


class Faults:
    """Registry of faults, switchable while a test runs. Names are documented in ``lk_probe.testing.FAULTS``."""

    def __init__(self, events: EventLog, known: Callable[[], set[str]]) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._events = events
        self._known = known

    def add(self, name: str, *, identity: str | None = None, count: int | None = 1, **params: Any) -> Fault:
        known = self._known()
        if name not in known:
            raise ValueError(f"unknown fault {name!r}; known faults: {', '.join(sorted(known))}")
        f = Fault(name, identity, count, params)
        with self._lock:
            self._faults.append(f)
        self._events.record("fault_added", name=name, identity=identity, count=count, params=params)
        return f

    def remove(self, fault: Fault) -> None:
        with self._lock:
            if fault in self._faults:
                self._faults.remove(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def peek(self, name: str, identity: str | None = None, *,
             where: Callable[[Fault], bool] | None = None) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if f.matches(name, identity) and (where is None or where(f)):
                    return f
        return None

    def take(self, name: str, identity: str | None = None, *,
             where: Callable[[Fault], bool] | None = None) -> Fault | None:
        """Consume one firing of the first matching fault and return it (None if nothing matches).

        ``where`` narrows the match on the fault's params (e.g. a fault limited to one signal path)."""
        with self._lock:
            for f in self._faults:
                if f.matches(name, identity) and (where is None or where(f)):
                    f.fired += 1
                    break
            else:
                return None
        self._events.record("fault_fired", name=name, identity=identity, params=f.params, fired=f.fired)
        return f


# --------------------------------------------------------------------------------------------------------
# tokens


class AuthError(Exception):
    pass


def mint_token(api_key: str, api_secret: str, *, identity: str = "", name: str = "", ttl: float = 600,
               video: dict[str, Any] | None = None, kind: str | None = None, metadata: str = "",
               attributes: dict[str, str] | None = None, room_config: dict[str, Any] | None = None) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": api_key, "sub": identity, "nbf": now - 5, "exp": now + int(ttl),
                              "video": video or {}}
    if name:
        claims["name"] = name
    if kind:
        claims["kind"] = kind
    if metadata:
        claims["metadata"] = metadata
    if attributes:
        claims["attributes"] = attributes
    if room_config:
        claims["roomConfig"] = room_config
    return jwt.encode(claims, api_secret, algorithm="HS256")


def verify_token(token: str, api_key: str, api_secret: str) -> dict[str, Any]:
    """Decode and check a LiveKit access token; raise AuthError with a clear reason."""
    try:
        claims = jwt.decode(token, api_secret, algorithms=["HS256"], options={"require": ["exp"]}, leeway=5)
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidTokenError as e:
        raise AuthError(f"invalid token: {e}") from None
    if claims.get("iss") != api_key:
        raise AuthError("invalid token: unknown API key")
    return claims


def bearer(headers: Any, query: Any = None) -> str | None:
    auth = headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer "):].strip()
    if query is not None and query.get("access_token"):
        return query.get("access_token")
    return None


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(6)


# --------------------------------------------------------------------------------------------------------
# room state (shared by Twirp, the worker protocol and signalling)


@dataclass
class ParticipantState:
    identity: str
    sid: str
    name: str = ""
    metadata: str = ""
    kind: str = "standard"  # "agent" for agents
    attributes: dict[str, str] = field(default_factory=dict)
    joined_at: float = field(default_factory=time.time)
    session: ParticipantSession | None = None  # set by signalling for participants it connected


@dataclass
class RoomState:
    name: str
    sid: str = field(default_factory=lambda: new_sid("RM_"))
    metadata: str = ""
    created_at: float = field(default_factory=time.time)
    empty_timeout: int = 300
    max_participants: int = 0
    participants: dict[str, ParticipantState] = field(default_factory=dict)  # by identity
    agents: list[dict[str, Any]] = field(default_factory=list)  # RoomAgentDispatch-like dicts from CreateRoom


def room_proto(room: RoomState) -> models.Room:
    """The ``Room`` message for ``room`` (JoinResponse, Job, Twirp CreateRoom / ListRooms)."""
    return models.Room(sid=room.sid, name=room.name, metadata=room.metadata, empty_timeout=room.empty_timeout,
                       max_participants=room.max_participants, creation_time=int(room.created_at),
                       creation_time_ms=int(room.created_at * 1000), num_participants=len(room.participants))


# --------------------------------------------------------------------------------------------------------
# the double as its protocol modules see it


class ParticipantSession(Protocol):
    """A participant's connection as the room sees it (``ParticipantState.session``)."""

    async def leave(self, action: str = "DISCONNECT", reason: str = "UNKNOWN_REASON") -> bool:
        """Send the participant a LeaveRequest (and, for DISCONNECT, drop it); True if it was sent."""
        ...


class ServerDouble(Protocol):
    """What the protocol modules need from the server (``LiveKitDouble`` is the implementation): its event log and
    faults, the key pair tokens are checked against, what it reports about itself, its rooms, and whether WebRTC may
    use non-loopback interfaces."""

    events: EventLog
    faults: Faults
    api_key: str
    api_secret: str
    version: str
    protocol: int
    region: str
    node_id: str
    max_message_size: int
    allow_non_loopback: bool

    def register_faults(self, faults: dict[str, str]) -> None: ...

    def add_stop_hook(self, hook: Callable[[], Awaitable[None]]) -> None: ...

    def ensure_room(self, name: str, *, created_by: str = "api", room_config: Any = None, **kw: Any) -> RoomState:
        ...


def server_info(double: ServerDouble) -> models.ServerInfo:
    """The ``ServerInfo`` the double reports (worker registration, JoinResponse, ReconnectResponse)."""
    return models.ServerInfo(edition=models.ServerInfo.Standard, version=double.version, protocol=double.protocol,
                             region=double.region, node_id=double.node_id)
