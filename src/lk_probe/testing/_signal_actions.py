"""Fault actions: what a test does to a connected participant, as a server would (these are methods of
:class:`~lk_probe.testing._signal.SignalService`; run them on the double's loop, e.g.
``double.call(double.signal.send_leave, "alice", action="RESUME")``).

- :func:`send_leave` / :func:`leave_participant`: Leave{reason, action}; DISCONNECT and RECONNECT also remove the
  participant server-side and close its signal socket, as livekit-server does;
- :func:`abort_signal`: TCP-abort the signal socket (the client resumes);
- :func:`lose_node`: node loss / migration: TCP abort, the server's peer connections closed, the participant
  forgotten, no Leave.

The client's own ``SimulateScenario`` requests end up here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._signal_participant import SignalParticipant
from ._signal_wire import LEAVE_ACTIONS, reason_name

if TYPE_CHECKING:
    from ._signal import SignalService


def _need(svc: SignalService, identity: str, room: str | None) -> SignalParticipant:
    p = svc.find(identity, room)
    if p is None:
        raise LookupError(f"no connected participant {identity!r}" + (f" in room {room!r}" if room else ""))
    return p


async def leave_participant(svc: SignalService, p: SignalParticipant, action: str = "DISCONNECT",
                            reason: str = "UNKNOWN_REASON") -> bool:
    """Send Leave{reason, action} to ``p``; reason may be a free-form phrase ("removed" -> PARTICIPANT_REMOVED)."""
    action = action.upper()
    if action not in LEAVE_ACTIONS:
        raise ValueError(f"unknown leave action {action!r} (DISCONNECT, RESUME, RECONNECT)")
    reason = reason_name(reason)
    sent = await svc.send_leave_message(p, action, reason)
    if action in ("DISCONNECT", "RECONNECT"):
        conn = p.conn
        await svc.remove(p, reason)
        if conn is not None:
            conn.close_reason = f"leave {action}"
            await conn.close(f"leave {action}")
    return sent


async def send_leave(svc: SignalService, identity: str, action: str = "RESUME", reason: str = "UNKNOWN_REASON", *,
                     room: str | None = None) -> bool:
    """Send Leave{reason, action} to the participant (recorded as ``leave_sent``). DISCONNECT and RECONNECT
    also remove the participant server-side, as livekit-server does."""
    reason_name(reason, strict=True)
    return await leave_participant(svc, _need(svc, identity, room), action=action, reason=reason)


async def abort_signal(svc: SignalService, identity: str, *, room: str | None = None) -> None:
    """TCP-abort the participant's signal socket (the client resumes)."""
    p = _need(svc, identity, room)
    if p.conn is not None:
        svc.record("signal_aborted", identity=identity, sid=p.sid)
        p.conn.abort("aborted by abort_signal")


async def lose_node(svc: SignalService, identity: str, *, room: str | None = None) -> None:
    """Node loss / migration: TCP abort, server PCs closed, participant forgotten, no Leave."""
    p = _need(svc, identity, room)
    svc.record("node_lost", identity=identity, sid=p.sid)
    if p.conn is not None:
        p.conn.abort("node lost")
    await svc.remove(p, "node lost")
