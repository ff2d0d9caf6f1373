"""The phase catalogue: the one table that drives spans, budgets, metrics, docs and test helpers.

Every span lk_probe emits is an instance of a phase listed here, and the span's name is the phase name.
Phases owned by livekit-agents are listed too (``owner="livekit-agents"``): lk_probe never emits them,
it nests its own phases under them, and the test helpers can look them up like any other phase.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from opentelemetry.trace import SpanKind

# ================================================================================================================
# The vocabulary: every attribute and event name lk_probe emits, as the constants the code uses. A test checks that
# every attribute and event seen in any test run is listed here, and the README's tables are generated from here.


@dataclass(frozen=True)
class Attribute:
    name: str
    type: str  # "string" | "int" | "float" | "bool"
    description: str


@dataclass(frozen=True)
class Event:
    name: str
    description: str
    attributes: tuple[str, ...] = ()


ATTRIBUTES: dict[str, Attribute] = {}
EVENTS: dict[str, Event] = {}
_STR, _INT, _FLOAT, _BOOL = "string", "int", "float", "bool"


def _a(name: str, typ: str, description: str) -> str:
    ATTRIBUTES[name] = Attribute(name, typ, description)
    return name


def _e(name: str, description: str, *attributes: str) -> str:
    EVENTS[name] = Event(name, description, attributes)
    return name


# ---- every span ----------------------------------------------------------------------------------------------
PHASE = _a("lk_probe.phase", _STR, "The catalogue phase this span is an instance of (equal to its name).")
OUTCOME = _a("lk_probe.outcome", _STR, "How the phase ended: ok, error, or a phase-specific outcome (accepted, "
             "rejected, assigned, launched, killed, recovered, gave_up, incomplete …).")
ERROR_TYPE = _a("error.type", _STR, "Low-cardinality failure class (see the error types below); set with ERROR status.")
INFERRED = _a("lk_probe.inferred", _BOOL, "The phase's boundaries were inferred, not logged by the SDK.")
INFERRED_FROM = _a("lk_probe.inferred_from", _STR, "What the inference was made from (short, low-cardinality).")
INCOMPLETE = _a("lk_probe.incomplete", _BOOL, "Exported by the worker from the crash journal: the job process died "
                "while this phase was open.")
# ---- LiveKit ids (livekit-agents' own keys) ---------------------------------------------------------------------
JOB_ID = _a("lk.job_id", _STR, "The LiveKit job id (AJ_…).")
DISPATCH_ID = _a("lk.dispatch_id", _STR, "The agent dispatch id (AD_…), when the job was dispatched explicitly.")
ROOM_SID = _a("lk.room_sid", _STR, "The room's sid (RM_…).")
ROOM_NAME = _a("lk.pii.room_name", _STR, "The room's name (may be personal data: under lk.pii.*).")
AGENT_NAME = _a("lk.agent_name", _STR, "The agent name the job was dispatched to.")
WORKER_ID = _a("lk.job.worker_id", _STR, "The id LiveKit gave the worker that received the job.")
# ---- generic OpenTelemetry conventions -----------------------------------------------------------------------------
SERVER_ADDRESS = _a("server.address", _STR, "Host name of the LiveKit server (never a path or query).")
SERVER_PORT = _a("server.port", _INT, "Port of the LiveKit server.")
PROCESS_PID = _a("process.pid", _INT, "The job process's pid.")
PROCESS_EXIT_CODE = _a("process.exit.code", _INT, "The job process's exit code (negative: killed by that signal).")
# ---- the job in the worker ------------------------------------------------------------------------------------------
JOB_RESUMING = _a("lk_probe.job.resuming", _BOOL, "The AvailabilityRequest was a resumption of a job after a "
                  "worker change.")
JOB_SERVER_SENT_AT = _a("lk_probe.job.server_sent_at", _INT, "When the server sent the job (ns since the epoch).")
ROOM_CREATED_AT = _a("lk_probe.room.created_at", _INT, "When the room was created (ns since the epoch).")
WORKER_LOAD = _a("lk_probe.worker.load", _FLOAT, "The worker's load when the job arrived (0–1).")
WORKER_STATUS = _a("lk_probe.worker.status", _STR, "The worker's status as last reported (WS_AVAILABLE, WS_FULL).")
WORKER_PREVIOUS_STATUS = _a("lk_probe.worker.previous_status", _STR, "The status before a change.")
WORKER_LOAD_THRESHOLD = _a("lk_probe.worker.load_threshold", _FLOAT, "The load at which the worker reports itself "
                           "full; absent when there is none (livekit-agents' default threshold is infinite).")
WORKER_ACTIVE_JOBS = _a("lk_probe.worker.active_jobs", _INT, "Jobs the worker was running when this one arrived.")
WORKER_IDLE_PROCESSES = _a("lk_probe.worker.idle_processes", _INT, "Warm idle job processes available.")
JOB_STATUS = _a("lk_probe.job.status", _STR, "A job status the worker reported to LiveKit (UpdateJobStatus), by "
                "name: JS_RUNNING, JS_SUCCESS, JS_FAILED.")
JOB_ERROR = _a("lk_probe.job.error", _STR, "The error the worker reported with the job's status.")
# ---- the worker's link to LiveKit (the /agent WebSocket) -------------------------------------------------------------
WORKER_RECONNECT = _a("lk_probe.worker.reconnect", _BOOL, "This connect follows a drop of the worker's link (false: "
                      "the worker's first connect).")
WORKER_LINK_DROPS = _a("lk_probe.worker.link_drops", _INT, "How many times the worker's link to LiveKit had dropped "
                       "so far (on a job: before the job arrived).")
WORKER_ATTEMPTS = _a("lk_probe.worker.attempts", _INT, "How many attempts the connect took (agents retries with a "
                     "backoff of 0, 2, 4 … 10 s, at most max_retry times).")
WORKER_RETRY_DELAY = _a("lk_probe.worker.retry_delay_s", _FLOAT, "The backoff agents waited after this failure before "
                        "its next attempt, in s.")
WORKER_REGISTERED_AT = _a("lk_probe.worker.registered_at", _INT, "When the worker's current registration with "
                          "LiveKit happened (ns since the epoch); on a job: the registration the job arrived on.")
WORKER_CLOSE_CODE = _a("lk_probe.worker.close_code", _INT, "The WebSocket close code of a dropped link, when there "
                       "was one.")
AVAILABLE = _a("lk_probe.available", _BOOL, "The worker's availability answer.")
TERMINATE = _a("lk_probe.terminate", _BOOL, "A rejecting answer that asked the server to stop offering the job.")
WARM = _a("lk_probe.warm", _BOOL, "The job got a warm idle process (false: a cold start).")
EXECUTOR = _a("lk_probe.executor", _STR, "How the job runs: process or thread.")
SIGNAL = _a("lk_probe.signal", _INT, "The signal that killed the job process.")
KILL_CAUSE = _a("lk_probe.kill_cause", _STR, "Why the worker killed the process (unresponsive, memory_limit, "
                "initialization_timeout, shutdown_timeout, killed).")
KILLED_BY_WORKER = _a("lk_probe.killed_by_worker", _BOOL, "The worker itself killed the job process.")
EXIT_STATUS_LOST = _a("lk_probe.exit_status_lost", _BOOL, "Exit code 255 of a job that finished: multiprocessing "
                      "lost the child's status; the journal says the job completed.")
INCOMPLETE_PHASES = _a("lk_probe.incomplete_phases", _INT, "How many phases the dead process left open (exported "
                       "from its journal).")
# ---- connect attempts and engine phases ------------------------------------------------------------------------------
ATTEMPT = _a("lk_probe.attempt", _INT, "The attempt's number, from 1.")
ATTEMPTS_MAX = _a("lk_probe.attempts_max", _INT, "How many attempts the engine makes at most.")
ERROR_REPORTED_TYPE = _a("lk_probe.error.reported_type", _STR, "The error type the SDK reported when it masks the "
                         "cause (livekit 1.1.2 reports the validate result instead of the signal timeout).")
SIGNAL_PATH = _a("lk_probe.signal.path", _STR, "The signalling path tried: v1 or v0.")
SIGNAL_REGION_FALLBACK = _a("lk_probe.signal.region_fallback", _BOOL, "A connect to a region URL after the first "
                            "host failed.")
SERVER_REGION = _a("lk_probe.server.region", _STR, "The server's region (JoinResponse; for the worker's link, "
                   "RegisterWorkerResponse).")
SERVER_NODE_ID = _a("lk_probe.server.node_id", _STR, "The server node (JoinResponse, RegisterWorkerResponse).")
SERVER_VERSION = _a("lk_probe.server.version", _STR, "The server's version (JoinResponse, RegisterWorkerResponse).")
SERVER_PROTOCOL = _a("lk_probe.server.protocol", _INT, "The signalling protocol version (JoinResponse, "
                     "RegisterWorkerResponse).")
SUBSCRIBER_PRIMARY = _a("lk_probe.subscriber_primary", _BOOL, "The subscriber PC is the primary one (v0 dual-PC).")
PING_INTERVAL = _a("lk_probe.signal.ping_interval", _INT, "How often the SDK pings the server on the signal "
                   "connection, in s (set by the JoinResponse).")
PING_TIMEOUT = _a("lk_probe.signal.ping_timeout", _INT, "How long the signal connection may stay silent before the "
                  "SDK gives it up ('ping timeout'), in s (set by the JoinResponse).")
JOIN_RESPONSE = _a("lk_probe.join.response", _STR, "Which response ended the join wait (join or reconnect).")
PC = _a("lk_probe.pc", _STR, "The peer connection: publisher or subscriber.")
SETUP_MS = _a("lk_probe.setup_ms", _FLOAT, "The engine's own 'connection setup took' figure, in ms.")
# ---- the selected ICE pair (on the connect span) ---------------------------------------------------------------------
ICE_PAIR_FIELDS = {"local_candidate_type": (_STR, "Local candidate type (host, srflx, prflx, relay)."),
                   "remote_candidate_type": (_STR, "Remote candidate type (host, srflx, prflx, relay)."),
                   "protocol": (_STR, "udp or tcp."),
                   "relayed": (_BOOL, "The pair goes through a TURN relay."),
                   "rtt_ms": (_FLOAT, "The pair's current round-trip time, in ms.")}
for _pc in ("publisher", "subscriber"):
    for _f, (_t, _d) in ICE_PAIR_FIELDS.items():
        _a(f"lk_probe.ice.{_pc}.{_f}", _t, f"Selected ICE pair of the {_pc} PC: {_d}")


def ice_attribute(pc: str, field_name: str) -> str:
    """``lk_probe.ice.<pc>.<field>`` (catalogued above)."""
    return f"lk_probe.ice.{pc}.{field_name}"


ICE_UNAVAILABLE = _a("lk_probe.ice.unavailable", _STR, "Why no ICE pair could be read (no_selected_pair, "
                     "cancelled, TimeoutError, RuntimeError).")
# ---- reconnects ---------------------------------------------------------------------------------------------------
RECONNECT_SOURCE = _a("lk_probe.reconnect.source", _STR, "What closed the session (signal, publisher, subscriber, "
                      "leave …).")
RECONNECT_REASON = _a("lk_probe.reconnect.reason", _STR, "The reason the engine gave (ping timeout, Migration …).")
RECONNECT_SILENT_SINCE = _a("lk_probe.reconnect.silent_since", _INT, "A ping-timeout episode: when the signal path "
                            "went silent (the last pong), as Unix time in ns: the episode's start minus the ping "
                            "timeout.")
RECONNECT_ACTION = _a("lk_probe.reconnect.action", _STR, "What the engine decided: resume, restart or disconnect.")
RECONNECT_MODE = _a("lk_probe.reconnect.mode", _STR, "The attempt's kind: resume or restart.")
DISCONNECT_REASON = _a("lk_probe.disconnect_reason", _STR, "livekit.rtc's DisconnectReason, by name.")
RETRY_NOW = _a("lk_probe.retry_now", _BOOL, "The backoff was cut short (the engine retried at once).")
LEAVE_REASON = _a("lk_probe.leave.reason", _STR, "The server's Leave reason.")
LEAVE_ACTION = _a("lk_probe.leave.action", _STR, "The server's Leave action (resume, reconnect, disconnect).")
LEAVE_CAN_RECONNECT = _a("lk_probe.leave.can_reconnect", _BOOL, "The Leave allowed a reconnect.")
SYNTHESIZED = _a("lk_probe.synthesized", _BOOL, "A participant disconnect the SDK synthesized (not from the server).")
RETRY_FIRST_SEQ = _a("lk_probe.retry.first_seq", _INT, "First sequence number of a data-retry gap.")
RETRY_MISSING = _a("lk_probe.retry.missing", _INT, "Packets missing in a data-retry gap.")
DC_LABEL = _a("lk_probe.dc.label", _STR, "The data channel that closed.")
WATCHDOG_TASK = _a("lk_probe.watchdog.task", _STR, "The Rust handler a watchdog line is about (signal_event …).")
WATCHDOG_MESSAGE_KIND = _a("lk_probe.watchdog.message_kind", _STR, "The message that handler was processing "
                           "(Answer, Offer …).")
LOOP_BLOCKED_SPAN_ID = _a("lk_probe.loop_blocked.span_id", _STR, "livekit-agents' event_loop_blocked span that "
                          "overlapped this watchdog line.")
LOOP_BLOCKED_DURATION = _a("lk_probe.loop_blocked.duration_s", _FLOAT, "How long that block lasted, in s.")
RUST_WATCHDOG_TASK = _a("lk_probe.rust_watchdog.task", _STR, "On agents' event_loop_blocked: the Rust handler whose "
                        "watchdog line overlapped the block.")
RUST_WATCHDOG_MESSAGE_KIND = _a("lk_probe.rust_watchdog.message_kind", _STR, "… and the message it was processing.")
RUST_WATCHDOG_SPAN_ID = _a("lk_probe.rust_watchdog.span_id", _STR, "… and the lk_probe span holding that line.")
RUST_WATCHDOG_COUNT = _a("lk_probe.rust_watchdog.count", _INT, "… and how many watchdog lines overlapped.")
EVENT = _a("lk_probe.event", _STR, "On an `event` span: the event it carries.")
# ---- the dispatching side (livekit.api) and the dispatch watch --------------------------------------------------------
RPC_METHOD = _a("rpc.method", _STR, "The LiveKit API method called (CreateDispatch, ListDispatch, DeleteDispatch, "
                "CreateRoom).")
HTTP_STATUS = _a("http.response.status_code", _INT, "The HTTP status of a failed LiveKit API call.")
DISPATCH_AGENTS = _a("lk_probe.dispatch.agents", _INT, "How many agents a CreateRoom request dispatches (its "
                     "`agents` field).")
DISPATCH_COUNT = _a("lk_probe.dispatch.count", _INT, "How many dispatches a ListDispatch answer held.")
DISPATCH_SOURCE = _a("lk_probe.dispatch.source", _STR, "What the watched dispatch came from: create_dispatch, "
                     "create_room, or watch (a dispatch made elsewhere).")
DISPATCH_JOB_STATE = _a("lk_probe.dispatch.job_state", _STR, "The last job state LiveKit reported for the dispatch, "
                        "by name (JS_PENDING, JS_RUNNING, JS_SUCCESS, JS_FAILED; NO_JOB when it listed none).")
DISPATCH_JOB_ERROR = _a("lk_probe.dispatch.job_error", _STR, "The job's error as LiveKit reported it (JS_FAILED).")
DISPATCH_POLLS = _a("lk_probe.dispatch.polls", _INT, "How many times the watch looked (one look = ListDispatch + "
                    "ListParticipants).")
DISPATCH_API_CALLS = _a("lk_probe.dispatch.api_calls", _INT, "How many LiveKit API calls the watch made.")
DISPATCH_BOUND = _a("lk_probe.dispatch.bound_s", _FLOAT, "How long the watch was allowed to wait, in s.")
DISPATCH_JOINED_AFTER = _a("lk_probe.dispatch.joined_after_s", _FLOAT, "From the dispatch call to the agent "
                           "participant's join (the server's joined_at), in s.")
DISPATCH_LISTED = _a("lk_probe.dispatch.listed", _BOOL, "ListDispatch ever listed the watched dispatch.")
AGENT_IDENTITY = _a("lk.agent.identity", _STR, "The agent participant's identity (the job's participant identity).")
# ---- media after the connect ----------------------------------------------------------------------------------------
MEDIA_TRACK_SID = _a("lk_probe.media.track_sid", _STR, "The audio track's sid (TR_…).")
MEDIA_TRACK_SOURCE = _a("lk_probe.media.track_source", _STR, "The track's source (microphone, screenshare_audio, "
                        "unknown).")
MEDIA_PARTICIPANT_SID = _a("lk_probe.media.participant_sid", _STR, "The remote participant's sid (PA_…).")
MEDIA_PARTICIPANT_KIND = _a("lk_probe.media.participant_kind", _STR, "The remote participant's kind (standard, sip, "
                            "agent …).")
MEDIA_PRESENT_AT_CONNECT = _a("lk_probe.media.present_at_connect", _BOOL, "It was already there when the connect "
                              "returned.")
MEDIA_PACKETS = _a("lk_probe.media.packets", _INT, "RTP packets counted (received, or sent for the agent's own "
                   "track) when the phase ended.")
MEDIA_AUDIO_AFTER = _a("lk_probe.media.audio_resumed_after_s", _FLOAT, "On a recovered reconnect episode: from its "
                       "end until inbound audio flowed again, in s (absent when none came within 10 s).")
# ---- stall records ---------------------------------------------------------------------------------------------------
STALL_PHASE = _a("lk_probe.stall.phase", _STR, "The phase that is still open.")
STALL_ELAPSED = _a("lk_probe.stall.elapsed", _FLOAT, "How long it had been open, in s.")
STALL_BUDGET = _a("lk_probe.stall.budget", _FLOAT, "Its budget, in s.")
STALL_COUNT = _a("lk_probe.stall.count", _INT, "Which record this is for the phase (1 at the budget, 2 at twice it, …).")

# ---- findings (the diagnosis, see lk_probe._findings) ------------------------------------------------------------
FINDING_CODE = _a("lk_probe.finding.code", _STR, "The diagnosis: the code of the most specific finding (see the "
                  "findings table).")
FINDING_SUMMARY = _a("lk_probe.finding.summary", _STR, "… its one-sentence summary.")
FINDING_EVIDENCE = _a("lk_probe.finding.evidence", _STR, "… the evidence it rests on (phases, durations, "
                      "attributes).")
FINDING_CODES = _a("lk_probe.finding.codes", _STR, "Every finding of the job, most specific first, "
                   "comma-separated.")
RTC_VERSION = _a("lk_probe.rtc.version", _STR, "The livekit (rtc) package version that made the connect.")

# ---- events ------------------------------------------------------------------------------------------------------
EV_WORKER_STATUS = _e("worker.status_changed", "The worker's reported status changed while the job was open.",
                      WORKER_STATUS, WORKER_PREVIOUS_STATUS, WORKER_LOAD)
EV_JOB_STATUS = _e("job.status", "The worker reported the job's status to LiveKit (UpdateJobStatus).",
                   JOB_STATUS, JOB_ERROR)
EV_PC_FAILED = _e("rtc.pc_failed", "A peer connection failed.", PC)
EV_LEAVE = _e("rtc.leave", "The server sent Leave.", LEAVE_REASON, LEAVE_ACTION, LEAVE_CAN_RECONNECT)
EV_SESSION_CLOSE = _e("rtc.session_close", "The engine closed its session (a reconnect follows).",
                      RECONNECT_SOURCE, RECONNECT_REASON, RECONNECT_ACTION)
EV_WATCHDOG = _e("rtc.watchdog", "A Rust handler has run for 10 s (the SDK's watchdog line).",
                 WATCHDOG_TASK, WATCHDOG_MESSAGE_KIND, LOOP_BLOCKED_SPAN_ID, LOOP_BLOCKED_DURATION)
EV_MOVED = _e("rtc.moved", "The participant was moved to another room.")
EV_PARTICIPANT_DISCONNECTED = _e("rtc.participant_disconnected", "A remote participant left (or the SDK "
                                 "synthesized its departure).", SYNTHESIZED, DISCONNECT_REASON)
EV_TRACK_REPUBLISHED = _e("rtc.track_republished", "A local track was republished after a full reconnect.")
EV_DISCONNECTED = _e("rtc.disconnected", "The room disconnected.", DISCONNECT_REASON)
EV_DATA_RETRY_GAP = _e("rtc.data_retry_gap", "Reliable data packets went missing.", RETRY_FIRST_SEQ, RETRY_MISSING)
EV_DC_CLOSED = _e("rtc.dc_closed", "A data channel closed.", DC_LABEL)
EV_CONNECTION_SETUP = _e("rtc.connection_setup", "The engine's own connection-setup time.", SETUP_MS)
EV_JOIN_RESPONSE = _e("rtc.join_response", "The JoinResponse arrived.", SERVER_REGION, SERVER_NODE_ID,
                      SERVER_VERSION, SERVER_PROTOCOL, SUBSCRIBER_PRIMARY, PING_INTERVAL, PING_TIMEOUT)
EV_READY_TIMEOUT = _e("rtc.ready_timeout", "The engine timed out waiting for the room to be ready.")

# ---- error types (values of error.type) and disconnect reasons ------------------------------------------------------
ERROR_TYPES: dict[str, str] = {
    "timeout": "a signal connect or other wait timed out",
    "refused": "the connection was refused",
    "http_404": "the server answered 404 (an older server without the v1 path)",
    "http_4xx": "the server answered another 4xx",
    "http_5xx": "the server answered 5xx",
    "auth": "the token was refused (401/403)",
    "dns": "the host name did not resolve",
    "tls": "TLS failed",
    "closed": "the socket closed",
    "join_timeout": "no JoinResponse in time",
    "reconnect_response_timeout": "no ReconnectResponse in time",
    "pc_timeout": "a peer connection did not connect in time (ICE)",
    "pc_failed": "a peer connection failed",
    "validate_timeout": "the validate request timed out",
    "region_fetch_timeout": "the region fetch timed out",
    "region_fetch": "the region fetch failed",
    "leave": "the server sent Leave",
    "server_disconnect": "the server disconnected the participant",
    "reconnect_failed": "the engine gave up reconnecting",
    "disconnected": "the room disconnected",
    "cancelled": "the call was cancelled",
    "incomplete": "still open when the job (or lk_probe) ended",
    "process_died": "the job process died while the phase was open",
    "assignment_timeout": "no JobAssignment within livekit-agents' assignment timeout",
    "exit_code": "the job process exited with a non-zero code",
    "evicted": "dropped from lk_probe's bounded per-job state",
    "uninstrumented": "lk_probe was uninstalled while the phase was open",
    "error": "another failure",
    "gave_up": "the worker gave up connecting to LiveKit (livekit-agents' max_retry attempts failed)",
    # the dispatch watch's outcomes that are failures
    "never_joined": "the agent participant did not join the room within the watch's bound",
    "state_mismatch": "LiveKit reported a job state while no agent participant was in the room, until the bound",
    "job_failed": "LiveKit reported the dispatch's job as JS_FAILED",
    "room_gone": "the room was deleted (or never existed) while the watch waited",
    "deleted": "the dispatch was deleted while the watch waited",
    "unreachable": "the LiveKit API could not be reached until the watch's bound",
}
# Twirp error codes (livekit.api's ServerError.code), exported as they come
TWIRP_CODES = ("canceled", "unknown", "invalid_argument", "malformed", "deadline_exceeded", "not_found", "bad_route",
               "already_exists", "permission_denied", "unauthenticated", "resource_exhausted",
               "failed_precondition", "aborted", "out_of_range", "unimplemented", "internal", "unavailable",
               "dataloss")
ERROR_TYPES.update({code: "the LiveKit API answered with this Twirp error code" for code in TWIRP_CODES})
ERR_INCOMPLETE = "incomplete"
ERR_CANCELLED = "cancelled"

# livekit.rtc DisconnectReason values by number
DISCONNECT_REASONS = {0: "UNKNOWN_REASON", 1: "CLIENT_INITIATED", 2: "DUPLICATE_IDENTITY", 3: "SERVER_SHUTDOWN",
                      4: "PARTICIPANT_REMOVED", 5: "ROOM_DELETED", 6: "STATE_MISMATCH", 7: "JOIN_FAILURE",
                      8: "MIGRATION", 9: "SIGNAL_CLOSE", 10: "ROOM_CLOSED", 11: "USER_UNAVAILABLE",
                      12: "USER_REJECTED", 13: "SIP_TRUNK_FAILURE", 14: "CONNECTION_TIMEOUT", 15: "MEDIA_FAILURE",
                      16: "AGENT_ERROR"}

# metric instruments
METRIC_PHASE_DURATION = "lk_probe.phase.duration"
METRIC_PHASE_OUTCOME = "lk_probe.phase.outcome"
METRIC_FINDINGS = "lk_probe.findings"  # counter, by lk_probe.finding.code
METRIC_WORKER_OFFERS = "lk_probe.worker.offers"  # counter of job offers, by lk_probe.outcome: offered, accepted, rejected

# ================================================================================================================
# The phases.

# where a phase runs
WORKER = "worker"  # the agents worker (parent) process
JOB = "job"  # the job process
RTC = "rtc"  # inside livekit.rtc / the Rust engine (job process or any plain rtc user)
DISPATCHER = "dispatcher"  # any process calling livekit.api (a backend, the CLI)


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
ICE_ATTRIBUTES = tuple(ice_attribute(pc, f) for pc in ("publisher", "subscriber") for f in ICE_PAIR_FIELDS) + (
    ICE_UNAVAILABLE,)

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
           "lk_probe.worker.idle_processes", "lk_probe.worker.registered_at", "lk_probe.worker.link_drops",
           "lk_probe.finding.code", "lk_probe.finding.summary",
           "lk_probe.finding.evidence", "lk_probe.finding.codes")),
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
    # ---- worker process: the link to LiveKit (the /agent WebSocket) -------------------------------
    Phase("worker.connect", None, _C, WORKER,
          "The worker's connection to LiveKit's /agent WebSocket: from the first attempt (or the link's drop) to the "
          "RegisterWorkerResponse (outcome registered), or gave_up / closed. A root in the worker's own trace (one "
          "per worker); its duration after a drop is how long the worker was away.",
          "AgentServer/Worker._connection_task, ._handle_register; agents' 'failed to connect to livekit' line",
          (SERVER_ADDRESS, SERVER_PORT, AGENT_NAME, WORKER_ID, WORKER_RECONNECT, WORKER_LINK_DROPS, WORKER_ATTEMPTS,
           SERVER_VERSION, SERVER_REGION, SERVER_NODE_ID, SERVER_PROTOCOL, ERROR_TYPE, OUTCOME), budget=5.0),
    Phase("worker.attempt", "worker.connect", _C, WORKER,
          "One connect attempt: the WebSocket upgrade and the register exchange, until the register response or "
          "the failure (with the backoff agents waits before the next attempt). Emitted when it ends.",
          "a failed attempt's 'failed to connect to livekit, retrying in N s' line → the next one | _handle_register",
          (ATTEMPT, WORKER_RETRY_DELAY, ERROR_TYPE, OUTCOME)),
    Phase("worker.link", None, _I, WORKER,
          "The registered link, in the worker's trace: from the RegisterWorkerResponse until the socket drops "
          "(outcome dropped, with the error and close code) or the worker closes it (closed). Carries the status "
          "changes the worker reports (WS_AVAILABLE ↔ WS_FULL). A job's span links to the link it arrived on.",
          "AgentServer/Worker._handle_register → the next failure line | the end of _connection_task",
          (SERVER_ADDRESS, SERVER_PORT, AGENT_NAME, WORKER_ID, WORKER_LINK_DROPS, WORKER_CLOSE_CODE, ERROR_TYPE,
           OUTCOME)),
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
          ("server.address", "server.port", "lk_probe.outcome", "lk_probe.rtc.version", *ICE_ATTRIBUTES),
          budget=3.0),
    Phase("room_connect", "job_entrypoint", _C, JOB,
          "livekit-agents' own connect span (1.8.2+); lk_probe adds the selected ICE pair to it.",
          "livekit-agents", ("lk_probe.rtc.version", *ICE_ATTRIBUTES), owner="livekit-agents"),
    Phase("rtc.connect", None, _C, RTC,
          "livekit.rtc.Room.connect for plain rtc users (outside a job's connect span).",
          "livekit.rtc.Room.connect",
          ("server.address", "server.port", "lk_probe.outcome", "lk_probe.rtc.version", *ICE_ATTRIBUTES),
          budget=3.0),
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
           "lk_probe.server.protocol", "lk_probe.subscriber_primary", "lk_probe.signal.ping_interval",
           "lk_probe.signal.ping_timeout", "lk_probe.join.response",
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
           "lk_probe.reconnect.silent_since", "lk_probe.outcome", "lk_probe.disconnect_reason", "lk_probe.inferred",
           "lk_probe.inferred_from", MEDIA_AUDIO_AFTER), budget=10.0),
    Phase("rtc.reconnect.attempt", "rtc.reconnect", _I, RTC,
          "One resume or full-reconnect (restart) attempt.",
          "'resuming|restarting connection... attempt: N' → next attempt | recovered | failed",
          ("lk_probe.attempt", "lk_probe.reconnect.mode", "error.type", "lk_probe.outcome",
           "lk_probe.error.reported_type", "lk_probe.inferred", "lk_probe.inferred_from"), budget=10.0),
    Phase("rtc.reconnect.backoff", "rtc.reconnect", _I, RTC,
          "The wait between two reconnect attempts.",
          "gap between attempt records", ("lk_probe.retry_now",), budget=None),
    # ---- after the connect: media -----------------------------------------------------------------------
    Phase("media.participant_wait", None, _I, RTC,
          "From the connect to the first remote participant (the caller) in the room; zero-length when it was "
          "already there.",
          "Room.connect → participant_connected",
          (MEDIA_PARTICIPANT_SID, MEDIA_PARTICIPANT_KIND, MEDIA_PRESENT_AT_CONNECT, OUTCOME), budget=10.0),
    Phase("media.track_wait", None, _I, RTC,
          "From the first remote participant in the room to the first remote audio track published (zero-length "
          "when it was already published at the connect). Stays open, and stalls, while the caller publishes "
          "nothing.",
          "participant_connected → track_published",
          (MEDIA_PARTICIPANT_SID, MEDIA_TRACK_SID, MEDIA_PRESENT_AT_CONNECT, OUTCOME), budget=5.0),
    Phase("media.subscribe", None, _I, RTC,
          "The first remote audio track: from published (or the connect, when it was already published) to "
          "subscribed.",
          "track_published → track_subscribed",
          (MEDIA_TRACK_SID, MEDIA_TRACK_SOURCE, MEDIA_PARTICIPANT_SID, MEDIA_PRESENT_AT_CONNECT, OUTCOME), budget=2.0),
    Phase("media.first_audio", None, _I, RTC,
          "From that track's subscription to the first inbound RTP packet (the receiver's stats; frames prove "
          "nothing: the SDK yields silence without RTP). Stays open, and stalls, while no RTP comes.",
          "track_subscribed → packets_received > 0 (track.get_stats, polled)",
          (MEDIA_TRACK_SID, MEDIA_TRACK_SOURCE, MEDIA_PACKETS, OUTCOME), budget=2.0),
    Phase("media.silence", None, _I, RTC,
          "A subscribed audio track whose inbound RTP stopped (or never started) while the room is connected, for "
          "longer than the budget: opened back-dated to the last packet, so its stall record is exported at once "
          "while the silence lasts; ends when packets come again (outcome resumed) or the room goes.",
          "packets_received not increasing (track.get_stats, polled)",
          (MEDIA_TRACK_SID, MEDIA_TRACK_SOURCE, MEDIA_PACKETS, OUTCOME), budget=1.0),
    Phase("media.publish", None, _I, RTC,
          "The agent's own first published audio track: from published to the first RTP packet sent (outcome "
          "nothing_sent when the room or job ended first: an agent that never spoke; no budget, since an agent "
          "waits for the caller to speak first).",
          "local_track_published → packets_sent > 0 (track.get_stats, polled)",
          (MEDIA_TRACK_SID, MEDIA_TRACK_SOURCE, MEDIA_PACKETS, OUTCOME)),
    Phase("session.start", None, _I, JOB,
          "livekit-agents' AgentSession.start (plugins, RoomIO, the implicit connect): how long it took; an exception "
          "inside it is recorded here with its type.",
          "AgentSession.start",
          (OUTCOME, ERROR_TYPE), budget=5.0),
    # ---- the dispatching side: livekit.api calls and the dispatch watch ---------------------------------
    Phase("dispatch.create", None, _C, DISPATCHER,
          "AgentDispatchService.CreateDispatch. On success the span is the root of the dispatch's trace (ids derived "
          "from the dispatch id, linked to the caller's current span); on failure it stays in the caller's trace.",
          "livekit.api AgentDispatchService.create_dispatch",
          (DISPATCH_ID, AGENT_NAME, ROOM_NAME, JOB_ID, SERVER_ADDRESS, SERVER_PORT, RPC_METHOD, HTTP_STATUS,
           ERROR_TYPE, OUTCOME)),
    Phase("dispatch.list", None, _C, DISPATCHER,
          "AgentDispatchService.ListDispatch (list_dispatch / get_dispatch).",
          "livekit.api AgentDispatchService.list_dispatch, .get_dispatch",
          (ROOM_NAME, DISPATCH_ID, DISPATCH_COUNT, SERVER_ADDRESS, SERVER_PORT, RPC_METHOD, HTTP_STATUS, ERROR_TYPE,
           OUTCOME)),
    Phase("dispatch.delete", None, _C, DISPATCHER,
          "AgentDispatchService.DeleteDispatch.",
          "livekit.api AgentDispatchService.delete_dispatch",
          (DISPATCH_ID, ROOM_NAME, SERVER_ADDRESS, SERVER_PORT, RPC_METHOD, HTTP_STATUS, ERROR_TYPE, OUTCOME)),
    Phase("room.create", None, _C, DISPATCHER,
          "RoomService.CreateRoom, with the agents its `agents` field dispatches.",
          "livekit.api RoomService.create_room",
          (ROOM_NAME, ROOM_SID, DISPATCH_AGENTS, AGENT_NAME, SERVER_ADDRESS, SERVER_PORT, RPC_METHOD, HTTP_STATUS,
           ERROR_TYPE, OUTCOME)),
    Phase("dispatch.wait", "dispatch.create", _I, DISPATCHER,
          "The dispatch watch: from the dispatch call until the agent participant is in the room (outcome joined) "
          "or the answer is known otherwise (never_joined, state_mismatch, failed, room_gone, deleted, "
          "unreachable, api_error). Opt-in (dispatch_watch, lk_probe.watch_dispatch, lk-probe watch / canary).",
          "ListDispatch + ListParticipants with backoff",
          (DISPATCH_ID, AGENT_NAME, ROOM_NAME, JOB_ID, AGENT_IDENTITY, DISPATCH_SOURCE, DISPATCH_JOB_STATE,
           DISPATCH_JOB_ERROR, DISPATCH_POLLS, DISPATCH_API_CALLS, DISPATCH_BOUND, DISPATCH_JOINED_AFTER,
           DISPATCH_LISTED, ERROR_TYPE, OUTCOME), budget=10.0),
    # ---- the end -------------------------------------------------------------------------------
    Phase("event", None, _I, JOB,
          "An event with no open phase to carry it (a Rust watchdog line, a Leave or a data channel closing while "
          "simply connected): a zero-length span holding the event, under the job (or the connect's parent).",
          "any lk_probe event", ("lk_probe.event",)),
    Phase("finding", None, _I, JOB,
          "A diagnosis made when the job ended: a zero-length span under the span the finding concerns (that span "
          "has ended by then), carrying the finding.",
          "lk_probe's diagnosis at job end (lk_probe._findings)",
          ("lk_probe.finding.code", "lk_probe.finding.summary", "lk_probe.finding.evidence")),
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


def uncatalogued(spans: Iterable[Any]) -> list[str]:
    """What exported spans carry that the vocabulary above does not name, and values no backend can represent.

    ``spans``: :class:`lk_probe.spans.SpanRecord` objects. On lk_probe's own spans every attribute and event name
    must be catalogued; on other instrumentations' spans (livekit-agents') only the ``lk_probe.*`` attributes
    lk_probe adds. Infinite and NaN floats are reported wherever they are. One line per problem, each once.
    """
    problems: dict[str, None] = {}
    for s in spans:
        ours = s.scope == "lk_probe"
        if ours and s.name not in BY_NAME and not s.name.startswith("stall "):
            problems[f"span name {s.name!r} is not a catalogued phase"] = None
        for key, value in s.attributes.items():
            if (ours or key.startswith("lk_probe.")) and key not in ATTRIBUTES:
                problems[f"attribute {key!r} (on {s.name!r}) is not catalogued"] = None
            if isinstance(value, float) and not math.isfinite(value):
                problems[f"attribute {key!r} (on {s.name!r}) has the value {value!r}"] = None
        for ev in s.events if ours else ():
            if ev.name not in EVENTS:
                problems[f"event {ev.name!r} (on {s.name!r}) is not catalogued"] = None
            for key in ev.attributes:
                if key not in ATTRIBUTES:
                    problems[f"event attribute {key!r} (of {ev.name!r}) is not catalogued"] = None
    return list(problems)


def attributes_table() -> str:
    """The README's attribute table (a test keeps the README equal to this)."""
    rows = ["| attribute | type | meaning |", "|---|---|---|"]
    rows += [f"| `{a.name}` | {a.type} | {a.description} |" for a in ATTRIBUTES.values()]
    return "\n".join(rows)


def events_table() -> str:
    """The README's event and error-type tables (a test keeps the README equal to this)."""
    rows = ["| event | meaning | attributes |", "|---|---|---|"]
    rows += [f"| `{e.name}` | {e.description} | {', '.join(f'`{a}`' for a in e.attributes) or '–'} |"
             for e in EVENTS.values()]
    rows += ["", "| `error.type` | meaning |", "|---|---|"]
    rows += [f"| `{name}` | {desc} |" for name, desc in ERROR_TYPES.items()]
    return "\n".join(rows)
