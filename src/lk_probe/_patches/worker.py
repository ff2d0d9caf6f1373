"""The agents worker (parent process): job receipt → availability → request handler → assignment → launch → process.

Patch points are the same in livekit-agents 1.2–1.8 (see the README's phase table); the server class is ``Worker``
in 1.2 and ``AgentServer`` from 1.3. livekit-agents emits no spans in this process, so everything here is
lk_probe's own. The job's ``job`` span gets an id derived from the job id (``_ids``), which the job process uses as
its parent.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import re
import sys
import time
import weakref
from typing import Any
from urllib.parse import urlparse

from opentelemetry import context as otel_context
from opentelemetry.trace import Link

from .. import _catalogue as c
from .. import _journal, _provider, _verdict
from .._errors import guard
from .._ids import forced_ids, root_span_id_for, trace_id_for
from .._patching import wrap
from .._recorder import Recorder

WORKER_MOD = "livekit.agents.worker"
JOB_MOD = "livekit.agents.job"
POOL_MOD = "livekit.agents.ipc.proc_pool"
EXEC_MOD = "livekit.agents.ipc.job_proc_executor"
SUP_MOD = "livekit.agents.ipc.supervised_proc"
THREAD_MOD = "livekit.agents.ipc.job_thread_executor"

MAX_JOBS = 1024  # bound the per-job state whatever happens


class _JobTrace:
    def __init__(self, job: Any, t: int, worker: Any) -> None:
        self.job_id: str = job.id
        # the job's trace: derived from its dispatch id when it has one, else from its job id
        self.trace_id = trace_id_for(job.id, getattr(job, "dispatch_id", "") or "")
        # an empty context: the job span is a root whatever happens to be current in the worker
        self.rec = Recorder(otel_context.Context(), attributes={c.JOB_ID: job.id}, label=job.id)
        self.room: str | None = getattr(getattr(job, "room", None), "name", None) or None
        self.answered = False
        self.request_seen = False
        self.worker = worker


_jobs: dict[str, _JobTrace] = {}
_current: contextvars.ContextVar[_JobTrace | None] = contextvars.ContextVar("lk_probe_worker_job", default=None)
_last_status: dict[int, str] = {}


class _PerObject:
    """What lk_probe keeps about one of agents' objects without setting attributes on it: held under a weak key, so it
    goes with the object; an object that cannot be weakly referenced is simply not tracked."""

    def __init__(self) -> None:
        self._map: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def get(self, obj: Any) -> Any:
        try:
            return self._map.get(obj)
        except TypeError:
            return None

    def __setitem__(self, obj: Any, value: Any) -> None:
        try:
            self._map[obj] = value
        except TypeError:
            pass

    def clear(self) -> None:
        self._map.clear()


# agents' objects that carry one job (its JobRequest, its executor) → that job; and why an executor was killed
_job_of = _PerObject()
_kill_cause = _PerObject()
_links = _PerObject()


# ------------------------------------------------------------------------------------------------ the link to LiveKit


class _Link:
    """The worker's link to LiveKit (the ``/agent`` WebSocket) in a trace of its own, one per worker object.

    agents' connection loop (the same in 1.2–1.8) tries to connect and register, runs the socket, and on any failure
    — a refused attempt or a dropped link — logs "failed to connect to livekit, retrying in N s" and sleeps N s
    (0 after a drop, then 2, 4 … 10) before the next attempt. So an attempt starts when the loop starts or when the
    previous failure's backoff ends, and ends at the register response or at the next failure line.
    """

    def __init__(self, worker: Any) -> None:
        self.trace_id = random.getrandbits(128) or 1
        self.rec = Recorder(otel_context.Context(), label="worker")
        url = urlparse(str(getattr(worker, "_ws_url", "") or ""))
        self.attrs: dict[str, Any] = {c.SERVER_ADDRESS: url.hostname, c.SERVER_PORT: url.port,
                                      c.AGENT_NAME: getattr(worker, "_agent_name", None) or None}
        self.drops = 0
        self.attempts = 0  # attempts of the current connect that ended
        self.attempt_start = 0  # when the current attempt started (ns)
        self.registered_at: int | None = None

    def _root(self, phase: str, t: int, attributes: dict[str, Any]) -> None:
        with forced_ids(self.trace_id, random.getrandbits(64) or 1):
            self.rec.start(phase, phase, t=t, attributes={**self.attrs, **attributes})

    def connecting(self, t: int, *, delay: float = 0.0) -> None:
        """A connect begins at ``t``; its first attempt ``delay`` s later."""
        self.attempts = 0
        self.attempt_start = t + int(delay * 1e9)
        self._root("worker.connect", t, {c.WORKER_RECONNECT: self.drops > 0, c.WORKER_LINK_DROPS: self.drops})

    def _attempt(self, t: int, *, error: BaseException | None = None, error_type: str | None = None,
                 delay: float | None = None, outcome: str | None = None) -> None:
        self.attempts += 1
        start = min(self.attempt_start, t)
        self.rec.start("worker.attempt", "worker.attempt", t=start, parent="worker.connect",
                       attributes={c.ATTEMPT: self.attempts})
        self.rec.end("worker.attempt", t=t, error_type=error_type or (_link_error(error) if error else None),
                     error_message=_message(error),
                     attributes={c.WORKER_RETRY_DELAY: delay, **({c.OUTCOME: outcome} if outcome else {})})

    def failed(self, t: int, delay: float, error: BaseException | None) -> None:
        """agents' failure line: a dropped link (a reconnect begins) or a failed attempt."""
        if self.rec.is_open("worker.link"):
            close_code = getattr(error, "status_code", None)
            self.drops += 1
            self.rec.end("worker.link", t=t, error_type=_link_error(error), error_message=_message(error),
                         attributes={c.OUTCOME: "dropped", c.WORKER_LINK_DROPS: self.drops,
                                     c.WORKER_CLOSE_CODE: close_code if isinstance(close_code, int) and
                                     close_code >= 0 else None})
            self.connecting(t, delay=delay)
            return
        if not self.rec.is_open("worker.connect"):
            self.connecting(self.attempt_start or t)
        self._attempt(t, error=error, delay=delay)
        self.attempt_start = t + int(delay * 1e9)

    def registered(self, t: int, reg: Any) -> None:
        if not self.rec.is_open("worker.connect"):  # a register without a connect seen (installed mid-connect)
            self.connecting(t)
        self._attempt(t, outcome="registered")
        info = getattr(reg, "server_info", None)
        worker_attrs = {c.WORKER_ID: getattr(reg, "worker_id", None) or None}
        self.rec.end("worker.connect", t=t, attributes={
            **worker_attrs, c.OUTCOME: "registered", c.WORKER_ATTEMPTS: self.attempts,
            c.SERVER_VERSION: getattr(info, "version", None) or None,
            c.SERVER_REGION: getattr(info, "region", None) or None,
            c.SERVER_NODE_ID: getattr(info, "node_id", None) or None,
            c.SERVER_PROTOCOL: getattr(info, "protocol", None)})
        self.registered_at = t
        self._root("worker.link", t, {**worker_attrs, c.WORKER_LINK_DROPS: self.drops})

    def ended(self, t: int, exc: BaseException | None) -> None:
        """agents' connection loop returned (the worker closed) or gave up (RuntimeError after max_retry)."""
        gave_up = isinstance(exc, RuntimeError)
        if self.rec.is_open("worker.connect"):
            if gave_up:
                self._attempt(t, error_type="gave_up")
            self.rec.end("worker.connect", t=t, error_type="gave_up" if gave_up else None,
                         error_message=str(exc) if gave_up else None,
                         attributes={c.OUTCOME: "gave_up" if gave_up else "closed", c.WORKER_ATTEMPTS: self.attempts})
        self.rec.end("worker.link", t=t, attributes={c.OUTCOME: "closed"})
        self.rec.close_all(t=t, attributes={c.OUTCOME: "closed"})
        _provider.flush_soon()

    def link_of_job(self) -> tuple[dict[str, Any], list[Link] | None]:
        """What a job's span says about the link it arrived on: attributes and a link to the ``worker.link`` span."""
        span = self.rec.span("worker.link")
        sc = span.get_span_context() if span is not None else None
        return ({c.WORKER_REGISTERED_AT: self.registered_at, c.WORKER_LINK_DROPS: self.drops},
                [Link(sc)] if sc is not None and sc.is_valid else None)


def _message(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return getattr(error, "message", None) or str(error) or type(error).__name__


def _link_error(error: BaseException | None) -> str:
    """The ``error.type`` of a failed attempt or a dropped link."""
    import aiohttp

    from .._livekit_api import classify

    status = getattr(error, "status", None)
    if isinstance(error, aiohttp.ClientResponseError) and isinstance(status, int):
        return "auth" if status in (401, 403) else "http_404" if status == 404 else \
            "http_4xx" if status < 500 else "http_5xx"
    if "closed" in (_message(error) or "") or isinstance(error, aiohttp.WSServerHandshakeError):
        return "closed"
    return classify(error)[0] if error is not None else "error"


_link_var: contextvars.ContextVar[_Link | None] = contextvars.ContextVar("lk_probe_worker_link", default=None)
_FAILURE_LINE = re.compile(r"^failed to connect to livekit, retrying in (\d+(?:\.\d+)?)s")
AGENTS_LOGGER = "livekit.agents"


class _FailureLines(logging.Filter):
    """Reads agents' "failed to connect to livekit, retrying in N s" line (it lets every record through)."""

    def filter(self, record: logging.LogRecord) -> bool:
        with guard("worker.link_failure"):
            link = _link_var.get()
            m = _FAILURE_LINE.match(record.msg) if link is not None and isinstance(record.msg, str) else None
            if m is not None:
                error = getattr(record, "error", None)  # agents 1.5+: extra={"error": e}; 1.4: exc_info
                if not isinstance(error, BaseException) and record.exc_info:
                    error = record.exc_info[1]
                link.failed(time.time_ns(), float(m.group(1)), error)
        return True


_failure_lines = _FailureLines()


async def _connection_task(wrapped, instance, args, kwargs):
    link = token = None
    with guard("worker.link_start"):
        link = _Link(instance)
        _links[instance] = link
        link.connecting(time.time_ns())
        token = _link_var.set(link)
    exc: BaseException | None = None
    try:
        return await wrapped(*args, **kwargs)
    except BaseException as e:
        exc = e
        raise
    finally:
        with guard("worker.link_end"):
            if token is not None:
                _link_var.reset(token)
            if link is not None:
                link.ended(time.time_ns(), exc)


def _handle_register(wrapped, instance, args, kwargs):
    with guard("worker.registered"):
        link = _links.get(instance)
        if link is not None:
            link.registered(time.time_ns(), args[0] if args else kwargs["reg"])
    return wrapped(*args, **kwargs)


_offers: list[Any] = []


def _count_offer(outcome: str) -> None:
    with guard("worker.offers_metric"):
        if not _offers:
            from opentelemetry import metrics

            _offers.append(metrics.get_meter("lk_probe").create_counter(
                c.METRIC_WORKER_OFFERS, description="Job offers (AvailabilityRequests) the worker received, and its "
                                                    "answers, by outcome"))
        _offers[0].add(1, {c.OUTCOME: outcome})


def _server_class_path() -> str | None:
    import importlib

    mod = importlib.import_module(WORKER_MOD)
    if hasattr(mod, "AgentServer"):
        return "AgentServer"
    if hasattr(mod, "Worker"):
        return "Worker"
    return None


def _worker_state(worker: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    with guard("worker.state"):
        attrs[c.WORKER_ID] = getattr(worker, "id", None) or getattr(worker, "_id", None)
        load = getattr(worker, "_worker_load", None)
        if load is not None:
            attrs[c.WORKER_LOAD] = float(load)
        attrs[c.WORKER_STATUS] = _last_status.get(id(worker), "WS_AVAILABLE")
        jobs = getattr(worker, "active_jobs", None)
        if jobs is not None:
            attrs[c.WORKER_ACTIVE_JOBS] = len(jobs)
        pool = getattr(worker, "_proc_pool", None)
        q = getattr(pool, "_warmed_proc_queue", None)
        if q is not None:
            attrs[c.WORKER_IDLE_PROCESSES] = q.qsize()
        threshold = _threshold(worker)
        if threshold is not None:
            attrs[c.WORKER_LOAD_THRESHOLD] = threshold
    return attrs


def _threshold(worker: Any) -> float | None:
    mod = sys.modules.get(WORKER_MOD)
    opt_cls = getattr(mod, "ServerEnvOption", None) or getattr(mod, "_WorkerEnvOption", None)
    raw = getattr(worker, "_load_threshold", None)
    if raw is None:
        raw = getattr(getattr(worker, "_opts", None), "load_threshold", None)
    if opt_cls is None or raw is None:
        return None
    value = opt_cls.getvalue(raw, bool(getattr(worker, "_devmode", False)))
    return float(value)


def _job_attributes(job: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {c.JOB_ID: job.id}
    with guard("worker.job_attributes"):
        attrs[c.DISPATCH_ID] = job.dispatch_id or None
        attrs[c.ROOM_SID] = job.room.sid or None
        attrs[c.ROOM_NAME] = job.room.name or None
        attrs[c.AGENT_NAME] = job.agent_name or None
        started = int(job.state.started_at or 0)
        if started:
            attrs[c.JOB_SERVER_SENT_AT] = started
        created_ms = int(getattr(job.room, "creation_time_ms", 0) or 0) or int(job.room.creation_time or 0) * 1000
        if created_ms:
            attrs[c.ROOM_CREATED_AT] = created_ms * 1_000_000
    return attrs


# ------------------------------------------------------------------------------------------------ wrappers


def _handle_availability(wrapped, instance, args, kwargs):
    jt = None
    with guard("worker.availability"):
        msg = args[0] if args else kwargs["msg"]
        job = msg.job
        t = time.time_ns()
        if len(_jobs) >= MAX_JOBS:
            _jobs.pop(next(iter(_jobs))).rec.close_all(error_type="evicted")
        jt = _JobTrace(job, t, instance)
        attrs = {**_job_attributes(job), **_worker_state(instance),
                 c.JOB_RESUMING: bool(getattr(msg, "resuming", False))}
        link = _links.get(instance)
        link_attrs, links = link.link_of_job() if link is not None else ({}, None)
        with forced_ids(jt.trace_id, root_span_id_for(job.id, job.state.started_at)):
            jt.rec.start("job", "job", t=t, parent=None, attributes={**attrs, **link_attrs}, links=links)
        _count_offer("offered")
        job_ctx = jt.rec.context("job")
        if job_ctx is None:  # the job span could not be started: trace nothing for this job
            jt = None
        else:
            jt.rec.set_default_parent(job_ctx)
            jt.rec.start("job.availability", "job.availability", t=t)
            _verdict.attach(_provider.provider())
            _verdict.collector.watch(jt.trace_id)
            _jobs[job.id] = jt
    if jt is None or jt.rec.default_parent is None:
        return wrapped(*args, **kwargs)
    # tasks created by the original (the answer, the request handler, accept → launch) inherit this context
    token = otel_context.attach(jt.rec.default_parent)
    var_token = _current.set(jt)
    try:
        return wrapped(*args, **kwargs)
    finally:
        _current.reset(var_token)
        otel_context.detach(token)


def _queue_msg(wrapped, instance, args, kwargs):
    with guard("worker.queue_msg"):
        msg = args[0] if args else kwargs["msg"]
        which = msg.WhichOneof("message")
        if which == "availability":
            _on_answer(msg.availability)
        elif which == "update_worker":
            _on_worker_status(instance, msg.update_worker)
        elif which == "update_job":
            _on_job_status(msg.update_job)
    return wrapped(*args, **kwargs)


def _on_answer(av: Any) -> None:
    jt = _jobs.get(av.job_id)
    if jt is None or jt.answered:
        return
    jt.answered = True
    t = time.time_ns()
    _count_offer("accepted" if av.available else "rejected")
    if av.available:
        jt.rec.end("job.availability", t=t, attributes={c.AVAILABLE: True, c.OUTCOME: "accepted"})
        jt.rec.start("job.assignment", "job.assignment", t=t)
        return
    outcome = "rejected" if jt.request_seen else "rejected_unavailable"
    jt.rec.end("job.availability", t=t, attributes={c.AVAILABLE: False, c.OUTCOME: outcome,
                                                    c.TERMINATE: bool(getattr(av, "terminate", False))})
    _finish_job(jt, t, outcome=outcome)


def _on_worker_status(worker: Any, upd: Any) -> None:
    from livekit.protocol import agent

    status = agent.WorkerStatus.Name(upd.status)
    prev = _last_status.get(id(worker), "WS_AVAILABLE")
    _last_status[id(worker)] = status
    if status != prev:
        attrs = {c.WORKER_STATUS: status, c.WORKER_PREVIOUS_STATUS: prev,
                 c.WORKER_LOAD: float(upd.load)}
        for jt in list(_jobs.values()):
            jt.rec.event("job", c.EV_WORKER_STATUS, attributes=attrs)
        link = _links.get(worker)
        if link is not None and link.rec.is_open("worker.link"):
            link.rec.event("worker.link", c.EV_WORKER_STATUS, attributes=attrs)


def _on_job_status(upd: Any) -> None:
    from livekit.protocol import agent

    jt = _jobs.get(upd.job_id)
    if jt is not None:
        jt.rec.event("job", c.EV_JOB_STATUS, attributes={c.JOB_STATUS: agent.JobStatus.Name(upd.status),
                                                          c.JOB_ERROR: upd.error or None})


def _job_request_init(wrapped, instance, args, kwargs):
    result = wrapped(*args, **kwargs)
    with guard("worker.job_request"):
        jt = _current.get()
        job = kwargs.get("job") or (args[0] if args else None)
        if jt is None and job is not None:
            jt = _jobs.get(job.id)
        if jt is not None:
            jt.request_seen = True
            _job_of[instance] = jt
            jt.rec.start("job.request_handler", "job.request_handler")
    return result


async def _job_request_accept(wrapped, instance, args, kwargs):
    jt = _job_of.get(instance)
    with guard("worker.accept"):
        if jt is not None:
            jt.rec.end("job.request_handler", attributes={c.OUTCOME: "accepted"})
    try:
        return await wrapped(*args, **kwargs)
    except BaseException as e:
        with guard("worker.accept_failed"):
            if jt is not None:
                _on_accept_failed(jt, e)
        raise


def _on_accept_failed(jt: _JobTrace, e: BaseException) -> None:
    t = time.time_ns()
    name = type(e).__name__
    if name == "AssignmentTimeoutError":
        jt.rec.end("job.assignment", t=t, error_type="assignment_timeout",
                   error_message="no JobAssignment within the assignment timeout (7.5 s)")
        _finish_job(jt, t, outcome="assignment_timeout", error_type="assignment_timeout")
    elif isinstance(e, asyncio.CancelledError):
        _finish_job(jt, t, outcome="cancelled", error_type="cancelled")
    else:
        _finish_job(jt, t, outcome="launch_failed", error_type=name, error_message=str(e))


async def _job_request_reject(wrapped, instance, args, kwargs):
    with guard("worker.reject"):
        jt = _job_of.get(instance)
        if jt is not None:
            jt.rec.end("job.request_handler", attributes={c.OUTCOME: "rejected"})
    return await wrapped(*args, **kwargs)


def _handle_assignment(wrapped, instance, args, kwargs):
    with guard("worker.assignment"):
        assignment = args[0] if args else kwargs["assignment"]
        jt = _jobs.get(assignment.job.id)
        if jt is not None and jt.rec.is_open("job.assignment"):
            jt.rec.end("job.assignment", attributes={c.OUTCOME: "assigned"})
    return wrapped(*args, **kwargs)


async def _call_in_phase(jt: _JobTrace | None, key: str, wrapped, args, kwargs):
    """Await the wrapped call; if it fails, end the job's phase ``key`` with its exception, then re-raise it."""
    try:
        return await wrapped(*args, **kwargs)
    except BaseException as e:
        with guard(f"worker.{key}_failed"):
            if jt is not None:
                jt.rec.end(key, error_type=type(e).__name__, error_message=str(e))
        raise


def _job_being_launched(args: tuple, kwargs: dict) -> _JobTrace | None:
    """The job of a ``launch_job(info)`` call (the pool's and the executors')."""
    info = args[0] if args else kwargs["info"]
    return _jobs.get(info.job.id)


async def _in_phase(jt: _JobTrace | None, key: str, wrapped, args, kwargs, *, parent: str | None = None,
                   attributes: dict[str, Any] | None = None, end_attributes: dict[str, Any] | None = None):
    """Run the wrapped call as the job's phase ``key``: started before, ended after (with its exception if it fails)."""
    with guard(f"worker.{key}_start"):
        if jt is not None:
            jt.rec.start(key, key, parent=parent, attributes=attributes)
    result = await _call_in_phase(jt, key, wrapped, args, kwargs)
    with guard(f"worker.{key}_end"):
        if jt is not None:
            jt.rec.end(key, attributes=end_attributes)
    return result


async def _pool_launch_job(wrapped, instance, args, kwargs):
    jt, attrs = None, None
    with guard("worker.launch"):
        jt = _job_being_launched(args, kwargs)
        q = getattr(instance, "_warmed_proc_queue", None)
        idle = q.qsize() if q is not None else None
        attrs = {c.WARM: bool(idle) if idle is not None else None, c.WORKER_IDLE_PROCESSES: idle}
    return await _in_phase(jt, "job.launch", wrapped, args, kwargs, attributes=attrs,
                           end_attributes={c.OUTCOME: "launched"})


async def _exec_launch_job(wrapped, instance, args, kwargs):
    jt, parent = None, None
    with guard("worker.handoff"):
        jt = _job_being_launched(args, kwargs)
        parent = "job.launch" if jt is not None and jt.rec.is_open("job.launch") else None
    result = await _in_phase(jt, "job.handoff", wrapped, args, kwargs, parent=parent,
                             attributes={c.PROCESS_PID: getattr(instance, "pid", None)})
    with guard("worker.handed_off"):
        if jt is not None:
            executor = "thread" if type(instance).__name__ == "ThreadJobExecutor" else "process"
            jt.rec.start("job.process", "job.process", attributes={c.PROCESS_PID: getattr(instance, "pid", None),
                                                                   c.EXECUTOR: executor})
            _job_of[instance] = jt
    return result


async def _exec_supervise(wrapped, instance, args, kwargs):
    try:
        return await wrapped(*args, **kwargs)
    finally:
        # a healthy job's last spans go with the batch processor's next export (within its delay): the worker lives
        # on, and a flush here would be one more export request per job. A process that failed, or a job with a
        # finding (its verdict on the root), is news now.
        failed = False
        with guard("worker.process_end"):
            jt = _job_of.get(instance)
            if jt is not None:
                failed = _on_process_end(jt, instance)
        if failed:
            with guard("worker.flush"):
                _provider.flush_soon()  # in its own daemon thread: the worker's loop and executor never wait


def _on_process_end(jt: _JobTrace, proc: Any) -> bool:
    """End the job's process and root spans; True when the process failed (killed, a non-zero exit) or the job
    ended with a finding."""
    import signal

    t = time.time_ns()
    code = getattr(proc, "exitcode", None)
    killed = bool(getattr(proc, "killed", False))
    cause = _kill_cause.get(proc)
    attrs: dict[str, Any] = {c.PROCESS_EXIT_CODE: code, c.KILLED_BY_WORKER: killed,
                             c.KILL_CAUSE: cause, c.PROCESS_PID: getattr(proc, "pid", None)}
    error_type = error_message = None
    pid = getattr(proc, "pid", None)
    path = _journal.path_for(jt.job_id, pid) if pid is not None else None
    if code == 255 and path is not None and _journal.completed(path):
        # multiprocessing's forkserver reports 255 when it loses a child's status (two threads polling it: agents'
        # join thread and Process.start()'s cleanup of finished children). The job itself finished normally.
        attrs[c.EXIT_STATUS_LOST] = True
    elif code is not None and code < 0:
        try:
            signame = signal.Signals(-code).name
        except ValueError:
            signame = f"signal {-code}"
        attrs[c.SIGNAL] = -code
        error_type = signame
        error_message = f"job process killed by {signame}" + (f" ({cause})" if cause else "")
    elif code:
        error_type = "exit_code"
        error_message = f"job process exited with code {code}"
    outcome = "ok" if not error_type else ("killed" if (code or 0) < 0 else "failed")
    attrs[c.OUTCOME] = outcome
    handed: dict[str, Any] = {}
    if path is not None:
        handed = _journal.verdict(path)  # the job process's own diagnosis (it ended normally)
        if error_type:  # phases the dead process left open: exported with their own ids, marked incomplete
            attrs[c.INCOMPLETE_PHASES] = _journal.export_open(path, _provider.tracer(), t_death=t,
                                                                          cause=error_type)
        _journal.remove(path)
    jt.rec.end("job.process", t=t, error_type=error_type, error_message=error_message, attributes=attrs)
    troubled = _finish_job(jt, t, outcome=outcome, error_type=error_type, error_message=error_message,
                           attributes={k: v for k, v in attrs.items() if k != c.OUTCOME}, verdict=handed)
    return error_type is not None or troubled


def _finish_job(jt: _JobTrace, t: int, *, outcome: str, error_type: str | None = None,
                error_message: str | None = None, attributes: dict[str, Any] | None = None,
                verdict: dict[str, Any] | None = None) -> bool:
    """End the job's root span with its verdict; True when it has a finding."""
    attrs = {c.OUTCOME: outcome, **(attributes or {})}
    # anything still open under the job ends with it
    for key, _, _ in jt.rec.open_phases():
        if key != "job":
            jt.rec.end(key, t=t, error_type=error_type or c.ERR_INCOMPLETE, error_message=error_message)
    with guard("worker.verdict"):
        # the worker's own diagnosis (a dead process, an assignment that never came), else the job process's
        findings = _verdict.conclude(jt.trace_id, job_id=jt.job_id, room=jt.room, livekit_version=None)
        attrs.update(_verdict.root_attributes(findings) if findings else (verdict or {}))
    jt.rec.end("job", t=t, error_type=error_type, error_message=error_message, attributes=attrs)
    _jobs.pop(jt.job_id, None)
    return c.FINDING_CODE in attrs


_KILL_CAUSES = (("pong", "unresponsive"), ("ping", "unresponsive"), ("memory", "memory_limit"),
                ("initialize", "initialization_timeout"), ("aclose", "shutdown_timeout"),
                ("close", "shutdown_timeout"), ("kill", "killed"))


def _send_kill_signal(wrapped, instance, args, kwargs):
    with guard("worker.kill_cause"):
        frame = sys._getframe(1)
        while frame is not None and ("wrapt" in frame.f_code.co_filename or "lk_probe" in frame.f_code.co_filename):
            frame = frame.f_back
        name = frame.f_code.co_name if frame is not None else ""
        cause = next((c for k, c in _KILL_CAUSES if k in name), name or "unknown")
        _kill_cause[instance] = cause
    return wrapped(*args, **kwargs)


def instrument() -> None:
    cls = _server_class_path()
    if cls is None:
        from .._errors import warn_once

        warn_once("no-server-class", "lk_probe: livekit.agents.worker has neither AgentServer nor Worker; the "
                  "worker process is not traced")
    else:
        wrap(WORKER_MOD, f"{cls}._handle_availability", _handle_availability, feature="job receipt")
        wrap(WORKER_MOD, f"{cls}._queue_msg", _queue_msg, feature="availability answers and worker status")
        wrap(WORKER_MOD, f"{cls}._handle_assignment", _handle_assignment, feature="job assignment")
        if wrap(WORKER_MOD, f"{cls}._connection_task", _connection_task, feature="the worker's link to LiveKit"):
            wrap(WORKER_MOD, f"{cls}._handle_register", _handle_register, feature="the worker's registration")
            logging.getLogger(AGENTS_LOGGER).addFilter(_failure_lines)
    wrap(JOB_MOD, "JobRequest.__init__", _job_request_init, feature="the request handler")
    wrap(JOB_MOD, "JobRequest.accept", _job_request_accept, feature="job accept")
    wrap(JOB_MOD, "JobRequest.reject", _job_request_reject, feature="job reject")
    wrap(POOL_MOD, "ProcPool.launch_job", _pool_launch_job, feature="process acquisition (warm/cold)")
    wrap(EXEC_MOD, "ProcJobExecutor.launch_job", _exec_launch_job, feature="the hand-off to the process")
    wrap(EXEC_MOD, "ProcJobExecutor._supervise_task", _exec_supervise, feature="job process exit")
    wrap(SUP_MOD, "SupervisedProc._send_kill_signal", _send_kill_signal, feature="kill causes")
    # the thread executor (JobExecutorType.THREAD): the same hand-off, and the job's end when its thread is joined
    wrap(THREAD_MOD, "ThreadJobExecutor.launch_job", _exec_launch_job, feature="the hand-off to the job thread")
    wrap(THREAD_MOD, "ThreadJobExecutor._main_task", _exec_supervise, feature="job thread end")


def reset() -> None:
    for jt in list(_jobs.values()):
        jt.rec.close_all(error_type="uninstrumented")
    _jobs.clear()
    _last_status.clear()
    _job_of.clear()
    _kill_cause.clear()
    logging.getLogger(AGENTS_LOGGER).removeFilter(_failure_lines)
    for link in list(_links._map.values()):
        link.rec.close_all(error_type="uninstrumented")
    _links.clear()
