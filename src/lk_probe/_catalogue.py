"""The phase catalogue: the one table that drives spans, budgets, metrics, docs and test helpers.

Every span lk_probe emits is an instance of a phase listed here, and the span's name is the phase name.
Phases owned by livekit-agents are listed too (``owner="livekit-agents"``): lk_probe never emits them,
it nests its own phases under them, and the test helpers can look them up like any other phase.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from opentelemetry.trace import SpanKind

# where a phase runs
WORKER = "worker"  # the agents worker (parent) process
JOB = "job"  # the job process
RTC = "rtc"  # inside livekit.rtc / the Rust engine (job process or any plain rtc user)


@dataclass(frozen=True)
class Phase:
    name: str
    parent: str | None
    kind: SpanKind
    process: str
    description: str
    source: str
    attributes: tuple[str, ...] = ()
    budget: float | None = None  # seconds; crossing it while open emits a stall record
    owner: str = "lk_probe"  # "livekit-agents": emitted by agents, never by lk_probe
    env: str = field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", "LK_PROBE_BUDGET_" + self.name.upper().replace(".", "_"))


_I, _C, _S, _CO = SpanKind.INTERNAL, SpanKind.CLIENT, SpanKind.SERVER, SpanKind.CONSUMER

# the selected ICE candidate pair per peer connection, read after a successful connect onto the connect span
ICE_ATTRIBUTES = tuple(f"lk_probe.ice.{pc}.{f}" for pc in ("publisher", "subscriber") for f in (
    "local_candidate_type", "remote_candidate_type", "protocol", "relayed", "rtt_ms")) + ("lk_probe.ice.unavailable",)

PHASES: tuple[Phase, ...] = (
    # ---- worker process ------------------------------------------------------------------
    Phase("job", None, _CO, WORKER,
          "The job's root in the worker: from the AvailabilityRequest to the job's end (process exit, "
          "reject, assignment timeout).",
          "AgentServer/Worker._handle_availability → ProcJobExecutor._supervise_task",
          ("lk.job_id", "lk.dispatch_id", "lk.room_sid", "lk.pii.room_name", "lk.agent_name",
           "lk.job.worker_id", "lk_probe.job.resuming", "lk_probe.job.server_sent_at",
           "lk_probe.room.created_at", "lk_probe.outcome", "lk_probe.worker.load",
           "lk_probe.worker.status", "lk_probe.worker.load_threshold", "lk_probe.worker.active_jobs",
           "lk_probe.worker.idle_processes")),
    Phase("job.availability", "job", _I, WORKER,
          "From the AvailabilityRequest to the availability answer sent to the server: the load gate "
          "(1.4.2+) and the user's request handler.",
          "_handle_availability → _queue_msg(availability)",
          ("lk_probe.available", "lk_probe.outcome"), budget=0.5),
    Phase("job.request_handler", "job", _I, WORKER,
          "The user's on_request / request_fnc coroutine.",
          "the worker's request handler, wrapped per job",
          ("lk_probe.outcome",), budget=0.5),
    Phase("job.assignment", "job", _I, WORKER,
          "From the accepting answer to the server's JobAssignment (agents gives up after 7.5 s).",
          "_queue_msg(availability=True) → _handle_assignment",
          ("lk_probe.outcome",), budget=1.0),
    Phase("job.launch", "job", _I, WORKER,
          "Acquiring a job process: warm from the idle pool or a cold spawn, and the wait for it.",
          "ProcPool.launch_job",
          ("lk_probe.warm", "lk_probe.worker.idle_processes", "lk_probe.outcome"), budget=0.5),
    Phase("job.handoff", "job.launch", _I, WORKER,
          "Handing the job to the process (StartJobRequest).",
          "ProcJobExecutor.launch_job",
          ("process.pid",), budget=0.2),
    Phase("job.process", "job", _I, WORKER,
          "The job process (or, with the thread executor, the job thread) running the job, as the worker sees "
          "it, until it exits.",
          "ProcJobExecutor.launch_job → ._supervise_task; ThreadJobExecutor.launch_job → ._main_task",
          ("process.pid", "process.exit.code", "lk_probe.signal", "lk_probe.kill_cause", "lk_probe.executor",
           "lk_probe.outcome")),
    # ---- job process ---------------------------------------------------------------------
    Phase("process.prewarm", "job", _I, JOB,
          "Process start and the user's prewarm/setup function (happens before the job is known; "
          "emitted retroactively into the job's trace).",
          "_JobProc.initialize",
          ("process.pid",), budget=5.0),
    Phase("job_entrypoint", "job", _I, JOB,
          "livekit-agents' own job span (the user entrypoint; from 1.8.2 the job-process root).",
          "livekit-agents", owner="livekit-agents"),
    Phase("job.connect", "job_entrypoint", _C, JOB,
          "JobContext.connect (also the implicit connect of AgentSession.start). On livekit-agents "
          "1.8.2+ agents' own room_connect span plays this role and lk_probe nests under it.",
          "JobContext.connect",
          ("server.address", "server.port", "lk_probe.outcome", *ICE_ATTRIBUTES), budget=3.0),
    Phase("room_connect", "job_entrypoint", _C, JOB,
          "livekit-agents' own connect span (1.8.2+); lk_probe adds the selected ICE pair to it.",
          "livekit-agents", ICE_ATTRIBUTES, owner="livekit-agents"),
    Phase("rtc.connect", None, _C, RTC,
          "livekit.rtc.Room.connect for plain rtc users (outside a job's connect span).",
          "livekit.rtc.Room.connect",
          ("server.address", "server.port", "lk_probe.outcome", *ICE_ATTRIBUTES), budget=3.0),
    # ---- inside the Rust engine: the connect --------------------------------------------------
    Phase("rtc.attempt", "rtc.connect", _I, RTC,
          "One engine connect attempt (i of n): signal, join and peer connections.",
          "Rust records 'failed to connect: …, retrying... (i/n)'",
          ("lk_probe.attempt", "lk_probe.attempts_max", "error.type", "lk_probe.outcome",
           "lk_probe.error.reported_type"),
          budget=5.0),
    Phase("rtc.signal", "rtc.attempt", _C, RTC,
          "The signal WebSocket connect on one path (v1, then v0 after a 404).",
          "Rust records 'connecting to' → 'signal connection successful|failed'",
          ("server.address", "server.port", "lk_probe.signal.path", "error.type",
           "lk_probe.signal.region_fallback", "lk_probe.inferred", "lk_probe.inferred_from"), budget=2.0),
    Phase("rtc.validate", "rtc.attempt", _C, RTC,
          "GET …/validate after a failed signal connect (never logged; inferred).",
          "inferred from the records around it",
          ("lk_probe.inferred", "lk_probe.inferred_from", "error.type"), budget=1.0),
    Phase("rtc.region_fetch", "rtc.attempt", _C, RTC,
          "LiveKit Cloud region fetch after a failed connect (start and success never logged; inferred).",
          "inferred; 'failed to fetch region urls' / RegionError",
          ("lk_probe.inferred", "lk_probe.inferred_from", "error.type"), budget=1.0),
    Phase("rtc.join", "rtc.attempt", _I, RTC,
          "Waiting for the JoinResponse after the signal socket opened.",
          "Rust record 'received JoinResponse'",
          ("lk_probe.server.region", "lk_probe.server.node_id", "lk_probe.server.version",
           "lk_probe.server.protocol", "lk_probe.subscriber_primary", "lk_probe.join.response",
           "lk_probe.inferred", "lk_probe.inferred_from", "error.type"), budget=2.0),
    Phase("rtc.pc", "rtc.attempt", _I, RTC,
          "One peer connection (publisher or subscriber) reaching 'connected': ICE + DTLS.",
          "Rust records 'connection change, Connecting|Connected|Failed X'",
          ("lk_probe.pc", "error.type", "lk_probe.inferred", "lk_probe.inferred_from"), budget=5.0),
    Phase("rtc.callback", "rtc.connect", _I, RTC,
          "From the engine being connected to the connect callback reaching Python.",
          "connection setup / PC connected record → ConnectCallback",
          (), budget=0.5),
    # ---- after the connect: reconnects ---------------------------------------------------------
    Phase("rtc.reconnect", None, _I, RTC,
          "A reconnect episode: from the session close to recovered, gave up or disconnected.",
          "'received session close' → 'RtcEngine successfully recovered' | 'failed to reconnect'",
          ("lk_probe.reconnect.source", "lk_probe.reconnect.reason", "lk_probe.reconnect.action",
           "lk_probe.outcome", "lk_probe.disconnect_reason", "lk_probe.inferred", "lk_probe.inferred_from"),
          budget=10.0),
    Phase("rtc.reconnect.attempt", "rtc.reconnect", _I, RTC,
          "One resume or full-reconnect (restart) attempt.",
          "'resuming|restarting connection... attempt: N' → next attempt | recovered | failed",
          ("lk_probe.attempt", "lk_probe.reconnect.mode", "error.type", "lk_probe.outcome",
           "lk_probe.error.reported_type"), budget=10.0),
    Phase("rtc.reconnect.backoff", "rtc.reconnect", _I, RTC,
          "The wait between two reconnect attempts.",
          "gap between attempt records", ("lk_probe.retry_now",), budget=None),
    # ---- the end -------------------------------------------------------------------------------
    Phase("event", None, _I, JOB,
          "An event with no open phase to carry it (a Rust watchdog line, a Leave or a data channel closing while "
          "simply connected): a zero-length span holding the event, under the job (or the connect's parent).",
          "any lk_probe event", ("lk_probe.event",)),
    Phase("stall", None, _I, JOB,
          "A stall record: an open phase crossed its budget (exported while the phase is still open).",
          "lk_probe budgets",
          ("lk_probe.stall.phase", "lk_probe.stall.elapsed", "lk_probe.stall.budget")),
)

BY_NAME: dict[str, Phase] = {p.name: p for p in PHASES}


def phase(name: str) -> Phase:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown lk_probe phase {name!r}; known: {', '.join(BY_NAME)}") from None


def budget(name: str) -> float | None:
    """The budget of a phase in seconds: ``LK_PROBE_BUDGET_<PHASE>`` overrides the catalogue default."""
    p = phase(name)
    raw = os.environ.get(p.env)
    if raw:
        try:
            value = float(raw)
            return value if value > 0 else None
        except ValueError:
            pass
    return p.budget


def markdown_table() -> str:
    """The README's phase table (a test keeps the README equal to this)."""
    rows = ["| phase | parent | process | kind | budget | what it measures | where it comes from |",
            "|---|---|---|---|---|---|---|"]
    for p in PHASES:
        owner = " *(livekit-agents' own span)*" if p.owner != "lk_probe" else ""
        budget = f"{p.budget:g} s" if p.budget else "–"
        rows.append(f"| `{p.name}`{owner} | {f'`{p.parent}`' if p.parent else '–'} | {p.process} | "
                    f"{p.kind.name} | {budget} | {p.description} | {p.source} |")
    return "\n".join(rows)
