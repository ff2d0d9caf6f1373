"""The job process: prewarm, the job's trace context, ctx.connect, and the flush at job end.

lk_probe gets into every job process from the worker: ``ProcPool.__init__``'s ``initialize_process_fnc`` is replaced
by a picklable ``functools.partial(_child_init, original, options)``, so the child imports lk_probe and installs it
during prewarm even when the agent file is not re-imported there. ``_JobProc._start_job`` then attaches the context
derived from the job id, so livekit-agents' own spans (``job_entrypoint``, ``room_connect``, …) and lk_probe's land
in the worker's trace.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from .. import _journal, _provider
from .._errors import guard
from .._ids import job_parent_context, trace_id_for
from .._patching import wrap
from .._recorder import HoldableSpan, Recorder, holds

POOL_MOD = "livekit.agents.ipc.proc_pool"
LAZY_MOD = "livekit.agents.ipc.job_proc_lazy_main"
JOB_MOD = "livekit.agents.job"
TRACES_MOD = "livekit.agents.telemetry.traces"


@dataclass
class ConnectScope:
    """Set while JobContext.connect runs; Room.connect nests its phases under ``span`` (ours or agents')."""

    job_rec: Recorder | None
    span: Any = None


connect_scope: contextvars.ContextVar[ConnectScope | None] = contextvars.ContextVar("lk_probe_connect", default=None)

_state: dict[str, Any] = {"prewarm": None, "options": {}}
# per job, not per process: the thread executor runs several jobs in one process
_job_rec: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("lk_probe_job_rec", default=None)


def job_recorder() -> Recorder | None:
    return _job_rec.get()


def in_job_process() -> bool:
    return multiprocessing.current_process().name in ("job_proc",)


def _agents_has_room_connect_span() -> bool:
    try:
        from livekit.agents import __version__ as v

        major, minor, patch = (int(x) for x in v.split(".")[:3])
        return (major, minor, patch) >= (1, 8, 2)
    except Exception:  # noqa: BLE001
        return False


# ------------------------------------------------------------------------------------------------ child bootstrap


def _child_init(original: Any, options: dict[str, Any], proc: Any) -> Any:
    """Runs in the job process as its initialize_process_fnc (pickled by reference from the worker)."""
    t0 = time.time_ns()
    with guard("job.child_init"):
        if in_job_process():
            import lk_probe

            lk_probe.install(**options)
            _warm_up()
    try:
        return original(proc)
    finally:
        _state["prewarm"] = (t0, time.time_ns(), os.getpid())


def _warm_up() -> None:
    """Build the provider and import what a job needs now, during prewarm, not on the job's critical path."""
    _provider.tracer()
    _provider.attach_processors(_provider.provider())
    from .._rust import machine  # noqa: F401  (imported by the first Room.connect otherwise)


def _pool_init(wrapped, instance, args, kwargs):
    with guard("job.pool_init"):
        fnc = kwargs.get("initialize_process_fnc")
        if fnc is not None and not (isinstance(fnc, functools.partial) and fnc.func is _child_init):
            kwargs["initialize_process_fnc"] = functools.partial(_child_init, fnc, dict(_state["options"]))
    return wrapped(*args, **kwargs)


# ------------------------------------------------------------------------------------------------ the job


def _start_job(wrapped, instance, args, kwargs):
    ctx = None
    rec = None
    with guard("job.start"):
        msg = args[0] if args else kwargs["msg"]
        job = msg.running_job.job
        sampled = _provider.sampled_root(trace_id_for(job.id))
        ctx = job_parent_context(job.id, job.state.started_at, sampled=sampled)
        _provider.attach_processors(_provider.provider())
        if in_job_process():  # one job per process: the crash journal is the process's (not in the thread executor)
            with guard("job.journal_open"):
                if _journal.active is not None:
                    _journal.active.close()
                _journal.active = _journal.Journal(_journal.path_for(job.id, os.getpid()))
        rec = Recorder(ctx, attributes={"lk.job_id": job.id}, label=job.id)
        pre = _state.get("prewarm")
        if pre is not None:
            t0, t1, pid = pre
            rec.start("process.prewarm", "process.prewarm", t=t0, attributes={"process.pid": pid})
            rec.end("process.prewarm", t=t1)
    if ctx is None or rec is None:
        return wrapped(*args, **kwargs)
    token = otel_context.attach(ctx)  # the job task created inside inherits both
    rec_token = _job_rec.set(rec)
    try:
        return wrapped(*args, **kwargs)
    finally:
        _job_rec.reset(rec_token)
        otel_context.detach(token)


async def _run_job_task(wrapped, instance, args, kwargs):
    try:
        return await wrapped(*args, **kwargs)
    finally:
        with guard("job.end"):
            _close_job_phases()
            if in_job_process():
                j, _journal.active = _journal.active, None
                if j is not None:  # the worker reads `done` (and removes the file) when the process ends
                    j.done()
                    j.close()
            await _provider.flush_async()


def _close_job_phases() -> None:
    """End what the job left open: a connect span waiting for its ICE pair (at its own end time), lk_probe's job
    phases and the engine phases of the job's rooms (a connect or resume still running). Idempotent."""
    holds.expire()
    rec = _job_rec.get()
    if rec is not None:
        rec.close_all(error_type="incomplete", error_message="still open when the job ended")
        from . import room

        room.close_job_rooms(rec, error_type="incomplete", error_message="still open when the job ended")


def _on_cleanup(wrapped, instance, args, kwargs):
    # livekit-agents 1.3–1.8.1 shut down the SDK provider their tracer holds in this (then synchronous) method, before
    # the job task ends; if that is ours, end the job's open phases and get them out first (briefly). From 1.8.2 it is
    # async and only flushes: nothing to do.
    with guard("job.cleanup"):
        import inspect
        import sys

        if not inspect.iscoroutinefunction(wrapped):
            traces = sys.modules.get(TRACES_MOD)
            held = getattr(getattr(traces, "tracer", None), "_tracer_provider", None)
            if held is not None and held is _provider._state.get("provider"):
                _close_job_phases()
                _provider.flush(1.0)
    return wrapped(*args, **kwargs)


async def _ctx_connect(wrapped, instance, args, kwargs):
    if connect_scope.get() is not None or getattr(instance, "_connected", False):
        return await wrapped(*args, **kwargs)
    scope = ConnectScope(_job_rec.get())
    token = connect_scope.set(scope)
    own_span = None
    ctx_token = None
    try:
        with guard("job.connect_start"):
            if not _agents_has_room_connect_span():
                rec = scope.job_rec
                info = getattr(instance, "_info", None)
                attrs = _server_attrs(getattr(info, "url", "") or "")
                if rec is not None:
                    # under whatever is current: the entrypoint span when the user's entrypoint connects
                    own_span = rec.start("job.connect", "job.connect", attributes=attrs,
                                         context=otel_context.get_current())
                else:
                    own_span = _provider.tracer().start_span("job.connect", attributes={
                        "lk_probe.phase": "job.connect", **attrs})
                if own_span is not None:
                    scope.span = own_span
                    ctx_token = otel_context.attach(trace.set_span_in_context(own_span))
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as e:
            with guard("job.connect_failed"):
                _end_connect(scope, own_span, error=e)
            raise
        with guard("job.connect_end"):
            _end_connect(scope, own_span, error=None)
        return result
    finally:
        if ctx_token is not None:
            otel_context.detach(ctx_token)
        connect_scope.reset(token)


def _end_connect(scope: ConnectScope, own_span: Any, error: BaseException | None) -> None:
    if own_span is None:
        return
    kw: dict[str, Any] = {}
    if error is not None:
        kw = {"error_type": "cancelled" if isinstance(error, asyncio.CancelledError) else type(error).__name__,
              "error_message": str(error)}
    if scope.job_rec is not None and scope.job_rec.is_open("job.connect"):
        scope.job_rec.end("job.connect", **kw)
    else:
        from opentelemetry.trace import Status, StatusCode

        if error is not None:
            from .._recorder import redact

            own_span.set_status(Status(StatusCode.ERROR, redact(kw["error_message"] or kw["error_type"])))
            own_span.set_attribute("error.type", kw["error_type"])
        own_span.end()


def _server_attrs(url: str) -> dict[str, Any]:
    from urllib.parse import urlsplit

    try:
        u = urlsplit(url)
        port = u.port or (443 if u.scheme in ("wss", "https") else 80)
        return {"server.address": u.hostname, "server.port": port}
    except ValueError:
        return {}


def _agents_start_span(wrapped, instance, args, kwargs):
    span = wrapped(*args, **kwargs)
    with guard("job.capture_room_connect"):
        name = args[0] if args else kwargs.get("name")
        scope = connect_scope.get()
        if name == "room_connect" and scope is not None and scope.span is None:
            # its end can then be held for the ICE pair read after the connect (see _recorder.holds)
            span = HoldableSpan(span)
            scope.span = span
    return span


def _forkserver_preload(wrapped, instance, args, kwargs):
    names = None
    with guard("job.forkserver_preload"):
        given = list(args[0] if args else kwargs.get("module_names", []))
        if "lk_probe._preload" not in given:
            # before livekit-agents' _preload_freeze, which must stay last (it gc-freezes what was imported)
            at = next((i for i, n in enumerate(given) if n.endswith("_preload_freeze")), len(given))
            names = given[:at] + ["lk_probe._preload"] + given[at:]
    if names is None:
        return wrapped(*args, **kwargs)
    return wrapped(names)


def instrument(options: dict[str, Any]) -> None:
    _state["options"] = options
    wrap("multiprocessing.context", "BaseContext.set_forkserver_preload", _forkserver_preload, required=False)
    wrap(POOL_MOD, "ProcPool.__init__", _pool_init, feature="lk_probe in job processes")
    wrap(LAZY_MOD, "_JobProc._start_job", _start_job, feature="one trace per job")
    wrap(LAZY_MOD, "_JobProc._run_job_task", _run_job_task, feature="the flush at job end")
    wrap(JOB_MOD, "JobContext._on_cleanup", _on_cleanup, required=False)
    wrap(JOB_MOD, "JobContext.connect", _ctx_connect, feature="ctx.connect")
    if _agents_has_room_connect_span():
        wrap(TRACES_MOD, "_DynamicTracer.start_span", _agents_start_span, required=False)


def reset() -> None:
    _state.update(prewarm=None)
    if _journal.active is not None:
        _journal.active.close()
        _journal.active = None
