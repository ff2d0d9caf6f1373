"""The dispatching side: ``livekit.api`` calls that ask for an agent become CLIENT spans.

``AgentDispatchService.create_dispatch / list_dispatch / get_dispatch / delete_dispatch`` and
``RoomService.create_room`` (with its ``agents`` field) are wrapped. Only ``livekit.api`` is imported, never
``livekit.agents``: a backend that only dispatches is traced the same way.

A successful ``create_dispatch`` is recorded once its answer is known, as the root of the dispatch's trace (ids from
the dispatch id, see ``_ids``), linked to the caller's current span: the worker and the job process derive the same
trace from the job's dispatch id, so the dispatch, the wait and the job's spans are one trace. A failed call has no
dispatch id and stays in the caller's trace. With the ``dispatch_watch`` option a successful dispatch is followed by
a bounded background watch (``lk_probe._watch``).
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link

from .. import _catalogue as c
from .._errors import guard
from .._ids import dispatch_span_id_for, dispatch_trace_id_for, forced_ids
from .._livekit_api import classify, creds_of, quiet
from .._patching import wrap
from .._recorder import Recorder
from .._scope import server_attributes

DISPATCH_MOD = "livekit.api.agent_dispatch_service"
ROOM_MOD = "livekit.api.room_service"

def _method(phase: str) -> str:
    return {"dispatch.create": "CreateDispatch", "dispatch.list": "ListDispatch", "dispatch.delete": "DeleteDispatch",
            "room.create": "CreateRoom"}[phase]


class _Call:
    """One traced API call: a Recorder of its own (the call's span, budgets, metrics)."""

    def __init__(self, phase: str, instance: Any, attributes: dict[str, Any]) -> None:
        self.phase = phase
        self.t0 = time.time_ns()
        self.creds = creds_of(instance)
        self.attrs = {**server_attributes(self.creds.url), c.RPC_METHOD: _method(phase), **attributes}
        self.rec = Recorder(None, label=phase)

    def start_live(self) -> None:
        self.rec.start(self.phase, self.phase, t=self.t0, attributes=self.attrs)

    def fail(self, exc: BaseException) -> None:
        error_type, status = classify(exc)
        if not self.rec.is_open(self.phase):
            self.rec.start(self.phase, self.phase, t=self.t0, attributes=self.attrs)
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        self.rec.end(self.phase, error_type=error_type, error_message=f"{_method(self.phase)}: {message}",
                     attributes={c.HTTP_STATUS: status})


async def _traced(phase: str, instance: Any, wrapped: Any, args: tuple, kwargs: dict,
                  attributes: Any, result_attributes: Any, *, live: bool = True) -> Any:
    """Call ``wrapped`` as the phase ``phase``; ``attributes()`` / ``result_attributes(result)`` name what it did."""
    if quiet.get():
        return await wrapped(*args, **kwargs)
    call = None
    with guard(f"api.{phase}.start"):
        call = _Call(phase, instance, attributes())
        if live:
            call.start_live()
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as e:
        with guard(f"api.{phase}.failed"):
            if call is not None:
                call.fail(e)
        raise
    with guard(f"api.{phase}.end"):
        if call is not None:
            _succeeded(call, result, result_attributes(result))
    return result


def _succeeded(call: _Call, result: Any, attrs: dict[str, Any]) -> None:
    if call.phase == "dispatch.create":
        _dispatch_created(call, result, attrs)
        return
    names = attrs.pop("_agents", None) or []
    ctx = call.rec.context(call.phase)
    call.rec.end(call.phase, attributes=attrs)
    if names:
        from .. import _watch

        _watch.auto_watch(call.creds, result.name, agent_names=names, t0=call.t0, origin=ctx,
                          source="create_room")


def _dispatch_created(call: _Call, dispatch: Any, attrs: dict[str, Any]) -> None:
    """The call's span, recorded now that the dispatch id is known: the root of the dispatch's trace, linked to the
    caller's current span (its own trace)."""
    did = getattr(dispatch, "id", "") or ""
    caller = trace.get_current_span().get_span_context()
    links = [Link(caller)] if caller.is_valid else None
    if did:
        with forced_ids(dispatch_trace_id_for(did), dispatch_span_id_for(did)):
            call.rec.start(call.phase, call.phase, t=call.t0, context=otel_context.Context(),
                           attributes={**call.attrs, **attrs}, links=links)
    else:
        call.rec.start(call.phase, call.phase, t=call.t0, attributes={**call.attrs, **attrs})
    ctx = call.rec.context(call.phase)
    call.rec.end(call.phase)
    if did:
        from .. import _watch

        _watch.auto_watch(call.creds, dispatch.room, dispatch_id=did, agent_names=[dispatch.agent_name],
                          t0=call.t0, parent=ctx, source="create_dispatch")


def _arg(args: tuple, kwargs: dict, i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


def _job_of(dispatch: Any) -> str | None:
    jobs = getattr(getattr(dispatch, "state", None), "jobs", None)
    return jobs[-1].id if jobs else None


async def _create_dispatch(wrapped, instance, args, kwargs):
    def attrs() -> dict[str, Any]:
        req = _arg(args, kwargs, 0, "req")
        return {c.AGENT_NAME: req.agent_name or None, c.ROOM_NAME: req.room or None}

    return await _traced("dispatch.create", instance, wrapped, args, kwargs, attrs,
                         lambda d: {c.DISPATCH_ID: d.id or None, c.JOB_ID: _job_of(d)}, live=False)


async def _list_dispatch(wrapped, instance, args, kwargs):
    def attrs() -> dict[str, Any]:
        return {c.ROOM_NAME: _arg(args, kwargs, 0, "room_name") or None}

    return await _traced("dispatch.list", instance, wrapped, args, kwargs, attrs,
                         lambda r: {c.DISPATCH_COUNT: len(r)})


async def _get_dispatch(wrapped, instance, args, kwargs):
    def attrs() -> dict[str, Any]:
        return {c.DISPATCH_ID: _arg(args, kwargs, 0, "dispatch_id") or None,
                c.ROOM_NAME: _arg(args, kwargs, 1, "room_name") or None}

    return await _traced("dispatch.list", instance, wrapped, args, kwargs, attrs,
                         lambda r: {c.DISPATCH_COUNT: int(r is not None)})


async def _delete_dispatch(wrapped, instance, args, kwargs):
    def attrs() -> dict[str, Any]:
        return {c.DISPATCH_ID: _arg(args, kwargs, 0, "dispatch_id") or None,
                c.ROOM_NAME: _arg(args, kwargs, 1, "room_name") or None}

    return await _traced("dispatch.delete", instance, wrapped, args, kwargs, attrs, lambda r: {})


async def _create_room(wrapped, instance, args, kwargs):
    names: list[str] = []

    def attrs() -> dict[str, Any]:
        req = _arg(args, kwargs, 0, "create")
        agents = list(getattr(req, "agents", None) or ())
        names.extend(a.agent_name for a in agents)
        return {c.ROOM_NAME: req.name or None, c.DISPATCH_AGENTS: len(agents),
                c.AGENT_NAME: ",".join(sorted(set(names))) or None}

    return await _traced("room.create", instance, wrapped, args, kwargs, attrs,
                         lambda room: {c.ROOM_SID: room.sid or None, "_agents": names})


def instrument() -> None:
    wrap(DISPATCH_MOD, "AgentDispatchService.create_dispatch", _create_dispatch, required=False,
         feature="CreateDispatch")
    wrap(DISPATCH_MOD, "AgentDispatchService.list_dispatch", _list_dispatch, required=False, feature="ListDispatch")
    wrap(DISPATCH_MOD, "AgentDispatchService.get_dispatch", _get_dispatch, required=False, feature="ListDispatch")
    wrap(DISPATCH_MOD, "AgentDispatchService.delete_dispatch", _delete_dispatch, required=False,
         feature="DeleteDispatch")
    wrap(ROOM_MOD, "RoomService.create_room", _create_room, required=False, feature="CreateRoom")
