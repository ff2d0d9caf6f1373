"""One job's scope in the process that runs it, reachable through one context variable.

A job's scope owns what lk_probe keeps for that job: its recorder (the job's phases), the options lk_probe was
installed with, the connect in progress (while ``JobContext.connect`` runs) and the rooms the job connected. Closing
the scope — the job ended — ends everything still open in it: the job's phases and the engine phases of its rooms
(a connect or a resume still running).

The job patch creates the scope when the job starts and makes it current for the job's task (one job per process
with the process executor, several with the thread executor: the context variable keeps them apart); the room patch
reads it when ``Room.connect`` runs and hands the room's trace to it. Both patches import this module, never each
other.
"""

from __future__ import annotations

import contextvars
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from . import _catalogue as c
from ._config import Options
from ._recorder import Recorder, holds


class OwnedRoom(Protocol):
    """What the job needs from a room it owns: a way to end the room's open phases."""

    def close(self, *, error_type: str, error_message: str) -> None: ...


@dataclass(eq=False)
class ConnectScope:
    """Set while ``JobContext.connect`` runs: ``Room.connect`` nests its engine phases under ``span`` (lk_probe's
    ``job.connect`` or livekit-agents' ``room_connect``, once agents started it)."""

    span: Any = None


@dataclass(eq=False)
class JobScope:
    """What lk_probe keeps for one job in the process that runs it."""

    job_id: str
    recorder: Recorder | None
    options: Options
    room: str | None = None  # the room's name, for the job's diagnosis line
    trace_id: int = 0  # the job's trace (lk_probe._ids.trace_id_for)
    rooms: list[OwnedRoom] = field(default_factory=list)
    connect: ConnectScope | None = None
    closed: bool = False

    def with_connect(self, connect: ConnectScope) -> JobScope:
        """The same job (same recorder, same rooms) seen from inside a ``JobContext.connect`` call."""
        return dataclasses.replace(self, connect=connect)

    def own(self, room: OwnedRoom, *, first: bool = False) -> None:
        """``first``: closed before what the job already owns (media phases end with their own outcome before the
        room's recorder ends everything left open)."""
        if first:
            self.rooms.insert(0, room)
        else:
            self.rooms.append(room)

    def close(self, *, error_type: str = c.ERR_INCOMPLETE, error_message: str = "still open when the job ended") \
            -> None:
        """End what the job left open: a connect span waiting for its ICE pair (at its own end time), the job's
        phases and the engine phases of its rooms. Idempotent."""
        holds.expire()
        if self.recorder is not None:
            self.recorder.close_all(error_type=error_type, error_message=error_message)
        for room in list(self.rooms):
            room.close(error_type=error_type, error_message=error_message)


current: contextvars.ContextVar[JobScope | None] = contextvars.ContextVar("lk_probe_job_scope", default=None)


def server_attributes(url: str) -> dict[str, Any]:
    """``server.address`` / ``server.port`` of a LiveKit URL (never its path or query)."""
    try:
        u = urlsplit(url)
        port = u.port or (443 if u.scheme in ("wss", "https") else 80)
        return {c.SERVER_ADDRESS: u.hostname, c.SERVER_PORT: port}
    except ValueError:
        return {}
