"""lk_probe.testing: a LiveKit server double with fault injection, for testing agents without a LiveKit server.

The double speaks the real wire protocols on loopback, so the **real** livekit-agents worker and the **real**
``livekit`` Rust SDK talk to it unchanged:

* ``/agent``: the worker protocol (binary protobuf over WebSocket, JWT with ``video.agent``): registration, job
  offers (AvailabilityRequest / AvailabilityResponse), JobAssignment with a server-minted job token, job and worker
  status, JobTermination. Dispatch: explicit (Twirp CreateDispatch, :meth:`LiveKitDouble.create_dispatch`),
  automatic (workers without an agent name get a job when a participant's join creates a room) and from the join
  token's ``roomConfig.agents``. A job no worker accepts is parked and offered again when a worker reports
  ``WS_AVAILABLE``.
* ``/twirp/livekit.*``: AgentDispatchService Create/List/DeleteDispatch, RoomService CreateRoom / ListRooms /
  DeleteRoom / ListParticipants / RemoveParticipant, so ``livekit.api.LiveKitAPI(url=double.http_url, ...)`` works.
* ``/rtc``, ``/rtc/v1``: signalling and WebRTC (via aiortc), when ``lk_probe.testing._signal`` is available.

Everything the double sees and does is an :class:`Event` in ``double.events`` (``kind`` + ``data`` with job / worker
/ room ids); tests wait with ``double.events.wait_for_sync(kind, predicate, timeout)`` (or ``await ...wait_for``),
never with sleeps. Faults are switched with ``double.faults.add(name, identity=..., count=..., **params)``; the
names are listed with descriptions in :data:`FAULTS` and ``double.fault_descriptions``.

Example::

    from lk_probe.testing import AgentWorker, LiveKitDouble

    double = LiveKitDouble().start_in_thread()
    with AgentWorker("my_agent.py", double, agent_name="support") as worker:
        worker.wait_registered()
        double.faults.add("job_offer_delay", identity="support", delay=2.0)
        d = double.create_dispatch("room-1", "support")
        double.events.wait_for_sync("job_assigned", lambda e: e["dispatch"] == d.id, timeout=15)
    double.stop_thread()

In pytest, use the ``lk_double`` and ``agent_worker`` fixtures (``lk_probe.testing.fixtures``): they stop
everything and fail the test if a task, thread, socket or worker process is left behind. With ``LIVEKIT_URL``,
``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET`` set, ``lk_double`` is a :class:`RealServer` instead, and tests that need
faults or events are skipped. ``python -m lk_probe.testing.server --port 7880 --duration 600`` serves the double by
hand.
"""

from ._core import (
    AuthError,
    Event,
    EventLog,
    Fault,
    Faults,
    ParticipantState,
    RoomState,
    mint_token,
    verify_token,
)
from ._server import LiveKitDouble
from ._worker import AgentWorker
from . import _agent

try:
    from . import _signal as _signal_mod
except ImportError:
    _signal_mod = None  # type: ignore[assignment]

#: every fault name the double knows, with a one-line description
FAULTS: dict[str, str] = {**_agent.FAULTS, **(_signal_mod.FAULTS if _signal_mod is not None else {})}

__all__ = [
    "FAULTS",
    "AgentWorker",
    "AuthError",
    "Event",
    "EventLog",
    "Fault",
    "Faults",
    "LiveKitDouble",
    "ParticipantState",
    "RoomState",
    "mint_token",
    "verify_token",
]
