"""The job process: prewarm, the job's trace context, ctx.connect, and the flush at job end.

lk_probe gets into every job process from the worker: ``ProcPool.__init__``'s ``initialize_process_fnc`` is replaced
by a picklable ``functools.partial(_child_init, original, options)``, so the child imports lk_probe and installs it
during prewarm even when the agent file is not re-imported there. ``_JobProc._start_job`` then attaches the context
derived from the job id, so livekit-agents' own spans (``job_entrypoint``, ``room_connect``, …) and lk_probe's land
in the worker's trace.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from opentelemetry import context as otel_context
from opentelemetry import trace

from .. import _catalogue as c
from .. import _journal, _loopblock, _provider, _scope, _verdict
from .._errors import guard
from .._ids import job_parent_context, trace_id_for
from .._patching import wrap
from .._recorder import HoldableSpan, Recorder
from .._redact import clean

POOL_MOD = "livekit.agents.ipc.proc_pool"
LAZY_MOD = "livekit.agents.ipc.job_proc_lazy_main"
JOB_MOD = "livekit.agents.job"
TRACES_MOD = "livekit.agents.telemetry.traces"


@dataclass(frozen=True)
class _Prewarm:
    """The job process's start and prewarm, timed before any job is known (emitted into the first job's trace)."""

    start_ns: int
    end_ns: int
    pid: int


@dataclass
class _ProcessState:
    """What this module keeps per process: the install options handed to job processes and the prewarm timing."""

    options: dict[str, Any]
    install: Callable[..., None] | None = None
    prewarm: _Prewarm | None = None


_proc = _ProcessState(options={})


def in_job_process() -> bool:
    return multiprocessing.current_process().name in ("job_proc",)


def _agents_has_room_connect_span() -> bool:
    try:
        from livekit.agents import __version__ as v

        major, minor, patch = (int(x) for x in v.split(".")[:3])
        return (major, minor, patch) >= (1, 8, 2)
    except Exception:  # noqa: BLE001
        return False


_attached: "weakref.WeakSet[Any]" = weakref.WeakSet()


def attach_processors(provider: Any) -> None:
    """Add lk_probe's span hooks to an SDK provider once: the loop-block tie-in, then the crash journal (both inert
    outside a job)."""
    if provider in _attached or not hasattr(provider, "add_span_processor"):
        return
    _attached.add(provider)
    provider.add_span_processor(_loopblock.processor())
    provider.add_span_processor(_journal.JournalProcessor())
    _verdict.attach(provider)


# ------------------------------------------------------------------------------------------------ child bootstrap


def _child_init(original: Any, options: dict[str, Any], install: Callable[..., None], proc: Any) -> Any:
    """Runs in the job process as its initialize_process_fnc (pickled by reference from the worker): ``install`` is
    lk_probe's public install function, handed over by the worker."""
    t0 = time.time_ns()
    with guard("job.child_init"):
        if in_job_process():
            install(**options)
            _warm_up()
    try:
        return original(proc)
    finally:
        _proc.prewarm = _Prewarm(t0, time.time_ns(), os.getpid())


def _warm_up() -> None:
    """Build the provider, import and start what a job needs now, during prewarm, not between the job's start and
    its entrypoint (where they took 3–5 ms of first-use costs)."""
    _provider.tracer()
    attach_processors(_provider.provider())
    from .._rust import machine  # noqa: F401  (imported by the first Room.connect otherwise)
    from . import media  # noqa: F401  (likewise, once the connect succeeded)
    from .._recorder import _metrics, _watchdog

    _watchdog.start()  # starting a thread waits for it to run: long on a busy machine
    _metrics()  # the phase metrics' instruments
    with guard("job.journal_dir"):
        _journal.check_directory(_journal.directory())


def _pool_init(wrapped, instance, args, kwargs):
    with guard("job.pool_init"):
        fnc = kwargs.get("initialize_process_fnc")
        if fnc is not None and _proc.install is not None and not (
                isinstance(fnc, functools.partial) and fnc.func is _child_init):
            kwargs["initialize_process_fnc"] = functools.partial(_child_init, fnc, dict(_proc.options),
                                                                 _proc.install)
    return wrapped(*args, **kwargs)


# ------------------------------------------------------------------------------------------------ the job


def _start_job(wrapped, instance, args, kwargs):
    ctx = None
    scope = None
    with guard("job.start"):
        msg = args[0] if args else kwargs["msg"]
        job = msg.running_job.job
        trace_id = trace_id_for(job.id, job.dispatch_id)
        sampled = _provider.sampled_root(trace_id)
        ctx = job_parent_context(job.id, job.state.started_at, dispatch_id=job.dispatch_id, sampled=sampled)
        attach_processors(_provider.provider())
        if in_job_process():  # one job per process: the crash journal is the process's (not in the thread executor)
            with guard("job.journal_open"):
                _journal.open_for_job(job.id, os.getpid())
        rec = Recorder(ctx, attributes={c.JOB_ID: job.id}, label=job.id)
        _verdict.collector.watch(trace_id)
        scope = _scope.JobScope(job.id, rec, _provider.options(), room=getattr(job.room, "name", None) or None,
                                trace_id=trace_id)
        pre = _proc.prewarm
        if pre is not None:
            rec.start("process.prewarm", "process.prewarm", t=pre.start_ns, attributes={c.PROCESS_PID: pre.pid})
            rec.end("process.prewarm", t=pre.end_ns)
    if ctx is None or scope is None:
        return wrapped(*args, **kwargs)
    token = otel_context.attach(ctx)  # the job task created inside inherits both
    scope_token = _scope.current.set(scope)
    try:
        return wrapped(*args, **kwargs)
    finally:
        _scope.current.reset(scope_token)
        otel_context.detach(token)


async def _run_job_task(wrapped, instance, args, kwargs):
    try:
        return await wrapped(*args, **kwargs)
    finally:
        with guard("job.end"):
            scope = _scope.current.get()
            if scope is not None:
                scope.close()
                with guard("job.verdict"):
                    _conclude(scope)
            if in_job_process():  # the worker reads `done` (and removes the file) when the process ends
                _journal.end_job(done=True)
            await _provider.flush_async()


def _conclude(scope: _scope.JobScope) -> None:
    """The job's diagnosis, once, at its end: the finding spans and the WARNING line here, the verdict handed to the
    worker (which owns the job's root span) in the journal."""
    if not scope.job_id:
        return
    findings = _verdict.conclude(scope.trace_id, job_id=scope.job_id, room=scope.room,
                                 livekit_version=None)
    if findings and _journal.active is not None:
        _journal.active.verdict(_verdict.root_attributes(findings))


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
            scope = _scope.current.get()
            if held is not None and held is _provider.current() and scope is not None:
                scope.close()
                _provider.flush(1.0)
    return wrapped(*args, **kwargs)


async def _ctx_connect(wrapped, instance, args, kwargs):
    job = _scope.current.get()
    if (job is not None and job.connect is not None) or getattr(instance, "_connected", False):
        return await wrapped(*args, **kwargs)
    connect = _scope.ConnectScope()
    if job is None:  # lk_probe was installed after the job started: a connect scope with no job behind it
        job = _scope.JobScope("", None, _provider.options())
    token = _scope.current.set(job.with_connect(connect))
    own_span = None
    ctx_token = None
    try:
        with guard("job.connect_start"):
            if not _agents_has_room_connect_span():
                info = getattr(instance, "_info", None)
                attrs = _scope.server_attributes(getattr(info, "url", "") or "")
                if job.recorder is not None:
                    # under whatever is current: the entrypoint span when the user's entrypoint connects
                    own_span = job.recorder.start("job.connect", "job.connect", attributes=attrs,
                                                  context=otel_context.get_current())
                else:
                    own_span = _provider.tracer().start_span("job.connect", attributes={
                        c.PHASE: "job.connect", **attrs})
                if own_span is not None:
                    connect.span = own_span
                    ctx_token = otel_context.attach(trace.set_span_in_context(own_span))
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as e:
            with guard("job.connect_failed"):
                _end_connect(job.recorder, own_span, error=e)
            raise
        with guard("job.connect_end"):
            _end_connect(job.recorder, own_span, error=None)
        return result
    finally:
        if ctx_token is not None:
            otel_context.detach(ctx_token)
        _scope.current.reset(token)


def _end_connect(rec: Recorder | None, own_span: Any, error: BaseException | None) -> None:
    if own_span is None:
        return
    kw: dict[str, Any] = {}
    if error is not None:
        kw = {"error_type": c.ERR_CANCELLED if isinstance(error, asyncio.CancelledError) else type(error).__name__,
              "error_message": str(error)}
    if rec is not None and rec.is_open("job.connect"):
        rec.end("job.connect", **kw)
    else:
        from opentelemetry.trace import Status, StatusCode

        if error is not None:
            own_span.set_status(Status(StatusCode.ERROR, clean(kw["error_message"] or kw["error_type"])))
            own_span.set_attribute(c.ERROR_TYPE, kw["error_type"])
        own_span.end()


def _agents_start_span(wrapped, instance, args, kwargs):
    span = wrapped(*args, **kwargs)
    with guard("job.capture_room_connect"):
        name = args[0] if args else kwargs.get("name")
        job = _scope.current.get()
        if name == "room_connect" and job is not None and job.connect is not None and job.connect.span is None:
            # its end can then be held for the ICE pair read after the connect (see _recorder.holds)
            span = HoldableSpan(span)
            job.connect.span = span
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


def instrument(options: dict[str, Any], install: Callable[..., None]) -> None:
    """``install`` is lk_probe's public install function: each job process calls it with ``options`` at prewarm."""
    _proc.options = options
    _proc.install = install
    wrap("multiprocessing.context", "BaseContext.set_forkserver_preload", _forkserver_preload, required=False)
    wrap(POOL_MOD, "ProcPool.__init__", _pool_init, feature="lk_probe in job processes")
    wrap(LAZY_MOD, "_JobProc._start_job", _start_job, feature="one trace per job")
    wrap(LAZY_MOD, "_JobProc._run_job_task", _run_job_task, feature="the flush at job end")
    wrap(JOB_MOD, "JobContext._on_cleanup", _on_cleanup, required=False)
    wrap(JOB_MOD, "JobContext.connect", _ctx_connect, feature="ctx.connect")
    if _agents_has_room_connect_span():
        wrap(TRACES_MOD, "_DynamicTracer.start_span", _agents_start_span, required=False)


def reset() -> None:
    _proc.prewarm = None
    _journal.end_job(done=False)
