"""livekit.rtc.Room: the connect call, its room events, and the routing of Rust engine records to one machine.

Inside a job, Room.connect's engine phases nest under ``job.connect`` (ours) or agents' ``room_connect``; a plain
rtc user gets an ``rtc.connect`` span of its own. The Rust records carry no room handle, so they go to the machine
of the most recent Room that is still connecting or connected in this process (one room per job process is the
livekit-agents norm; with several rooms at once, records are attributed to the newest — see the README).
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from .. import _catalogue as c
from .. import _provider, _scope
from .._errors import guard, warn_once
from .._patching import wrap
from .._recorder import Recorder, holds

RTC_ROOM_MOD = "livekit.rtc.room"


@dataclass(eq=False)
class RoomTrace:
    """One ``Room.connect`` and what follows it: the recorder of the room's engine phases, the machine fed by the
    Rust records, and where things go once connected."""

    recorder: Recorder
    machine: Any  # the EngineMachine, or None when the bridge is unavailable
    own_span: Any  # lk_probe's rtc.connect for a plain rtc user; None inside a job's connect
    session_ctx: Any  # where reconnect episodes go after the connect: the job, or what was current at connect time
    connect_span: Any  # the span the ICE pair goes on: ours, lk_probe's job.connect or agents' room_connect
    closed: bool = False  # the connect failed or the room disconnected: records and events no longer go here

    def close(self, *, error_type: str, error_message: str) -> None:
        """End the engine phases this room left open (its job ended during a connect or a resume)."""
        self.recorder.close_all(error_type=error_type, error_message=error_message)


_lock = threading.Lock()
_rooms: list[tuple[weakref.ref, RoomTrace]] = []  # newest last
_MAX_ROOMS = 16
_listening: "weakref.WeakKeyDictionary[Any, RoomTrace]" = weakref.WeakKeyDictionary()
_ended: Any = None  # the machine of the room that closed last


def active_machine() -> Any:
    """The machine the Rust records go to: that of the newest Room still connecting or connected; with none, that
    of the room that closed last while it still awaits its last PC records (a job that ends right after connecting
    closes its room before the log batch with them arrives)."""
    global _ended
    with _lock:
        while _rooms and (_rooms[-1][0]() is None or _rooms[-1][1].closed):
            _ended = _rooms.pop()[1].machine
        if _rooms:
            return _rooms[-1][1].machine
        ended = _ended
    return ended if ended is not None and ended.awaits_late(time.time_ns()) else None


def _register(room: Any, rt: RoomTrace) -> None:
    with _lock:
        _rooms[:] = [(r, t) for r, t in _rooms if r() is not None and r() is not room]
        _rooms.append((weakref.ref(room), rt))
        del _rooms[:-_MAX_ROOMS]


def _rtc_version() -> str:
    try:
        from livekit.rtc import __version__

        return __version__
    except Exception:  # noqa: BLE001
        return "unknown"


def _new_machine(rec: Recorder) -> Any:
    try:
        from .._rust.machine import EngineMachine
    except ImportError as e:
        warn_once("no-machine", "lk_probe: the Rust engine bridge is unavailable (%s); connect phases inside the "
                  "engine are not traced", e)
        return None
    return EngineMachine(rec, version=_rtc_version())


async def _room_connect(wrapped, instance, args, kwargs):
    rt = quiet = None
    with guard("room.connect_start"):
        if _provider.suppressed():
            quiet = _quiet(instance)
        else:
            rt = _begin(instance, args, kwargs)
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as e:
        with guard("room.connect_failed"):
            if rt is not None:
                _finish(instance, rt, error=e)
            if quiet is not None:
                quiet.closed = True
        raise
    with guard("room.connect_done"):
        if rt is not None:
            _finish(instance, rt, error=None)
    return result


def _begin(room: Any, args: tuple, kwargs: dict) -> RoomTrace:
    url = args[0] if args else kwargs.get("url", "")
    t = time.time_ns()
    job = _scope.current.get()
    connect = job.connect if job is not None else None
    job_rec = job.recorder if job is not None else None
    ambient = otel_context.get_current()
    common = dict(job_rec.attributes) if job_rec is not None else {}
    label = job_rec.label if job_rec is not None else ""
    if connect is not None:  # inside a job's connect: under its span (ours or agents'), no span of our own
        parent_ctx = trace.set_span_in_context(connect.span) if connect.span is not None else ambient
        rec = Recorder(parent_ctx, attributes=common, label=label)
        own = None
        if connect.span is not None and connect.span.is_recording():
            connect.span.set_attribute(c.RTC_VERSION, _rtc_version())
    else:
        rec = Recorder(ambient, attributes=common, label=label)
        own = rec.start("rtc.connect", "rtc.connect", t=t, attributes={**_scope.server_attributes(url or ""),
                                                                        c.RTC_VERSION: _rtc_version()})
        rec.set_default_parent(rec.context("rtc.connect"))
    machine = _new_machine(rec)
    rt = RoomTrace(rec, machine, own,
                   session_ctx=job_rec.default_parent if job_rec is not None else ambient,
                   connect_span=own if own is not None else (connect.span if connect is not None else None))
    if job is not None:
        job.own(rt)  # the job's end closes what the room left open
    if machine is not None:
        _register(room, rt)
        machine.connect_started(t, url or "")
    return rt


def _quiet(room: Any) -> RoomTrace:
    """A Room connected inside ``suppress_instrumentation()``: untraced for its whole life. It becomes the newest room,
    with no machine, so the engine's records of its connect and of its later reconnects go nowhere; once it failed to
    connect or disconnected, it no longer stands in front of the rooms connected before it."""
    rt = RoomTrace(Recorder(None), None, None, None, None)
    _register(room, rt)

    def gone(*_: Any) -> None:
        rt.closed = True

    room.on("disconnected", gone)
    return rt


def _finish(room: Any, rt: RoomTrace, error: BaseException | None) -> None:
    t = time.time_ns()
    err_text = None if error is None else (str(error) or type(error).__name__)
    if rt.machine is not None:
        rt.machine.connect_finished(t, err_text)
    if error is None:
        _read_ice_pair_later(room, rt.connect_span)
    if rt.own_span is not None:
        if error is None:
            rt.recorder.end("rtc.connect", t=t)
        else:
            rt.recorder.end("rtc.connect", t=t, error_type=_connect_error_type(error), error_message=err_text)
    if error is None:
        rt.recorder.set_default_parent(rt.session_ctx)
        if rt.machine is not None:
            _listen(room, rt)
        if _provider.options().media:
            with guard("room.media"):
                from . import media

                media.watch(room, rt.recorder)
    else:
        rt.closed = True


ICE_STATS_TIMEOUT = 2.0  # the longest a connect span's end is held for the ICE pair
_ice_tasks: set[Any] = set()


def _read_ice_pair_later(room: Any, span: Any) -> None:
    """Hold the connect span's end (its end time stays exact) and read the selected pairs on a task of their own."""
    if span is None or not _provider.options().ice_stats or not span.is_recording():
        return
    import asyncio

    holds.hold(span, ICE_STATS_TIMEOUT)
    task = asyncio.get_running_loop().create_task(_read_ice_pair(room, span))
    _ice_tasks.add(task)
    task.add_done_callback(_ice_tasks.discard)


async def _read_ice_pair(room: Any, span: Any) -> None:
    """Poll get_rtc_stats() until a PC has a selected pair (the engine may return before ICE settled)."""
    import asyncio

    attrs: dict[str, Any] = {}
    deadline = time.monotonic() + ICE_STATS_TIMEOUT - 0.2
    try:
        with guard("room.ice_stats"):
            delay = 0.05
            while True:
                try:
                    stats = await asyncio.wait_for(room.get_rtc_stats(), max(deadline - time.monotonic(), 0.05))
                except (asyncio.TimeoutError, RuntimeError) as e:  # slow FFI answer, or the room already left
                    attrs = {c.ICE_UNAVAILABLE: type(e).__name__}
                    break
                attrs = ice_pair_attributes(stats)
                if attrs:
                    break
                if time.monotonic() + delay > deadline:
                    attrs = {c.ICE_UNAVAILABLE: "no_selected_pair"}
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.4)
    except asyncio.CancelledError:  # the job ended (or the loop closed) before a pair was selected
        attrs = attrs or {c.ICE_UNAVAILABLE: "cancelled"}
        raise
    finally:
        holds.release(span, attrs)


_ICE_KINDS = {"transport": "transport", "candidate_pair": "candidate_pair", "local_candidate": "candidate",
              "remote_candidate": "candidate"}


def _enum_name(msg: Any, field: str) -> str:
    value = getattr(msg, field)
    try:
        return msg.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[value].name.lower()
    except (KeyError, AttributeError):
        return str(value)


def ice_pair_attributes(stats: Any) -> dict[str, Any]:
    """``lk_probe.ice.<pc>.*`` for the selected candidate pair of each peer connection in a ``get_rtc_stats()``.

    Candidate types, transport protocol, relayed or not and the current round-trip time; never an address.
    The selected pair is the transport's ``selected_candidate_pair_id``, else a nominated, succeeded pair.
    """
    out: dict[str, Any] = {}
    for pc, items in (("publisher", stats.publisher_stats), ("subscriber", stats.subscriber_stats)):
        by_id: dict[str, Any] = {}
        selected_ids: list[str] = []
        pairs: list[Any] = []
        for item in items:
            kind = item.WhichOneof("stats")
            if kind not in _ICE_KINDS:
                continue
            wrapper = getattr(item, kind)  # {rtc: {id, timestamp}, <kind's own message>}
            body = getattr(wrapper, _ICE_KINDS[kind])
            by_id[wrapper.rtc.id] = (kind, body)
            if kind == "transport" and body.selected_candidate_pair_id:
                selected_ids.append(body.selected_candidate_pair_id)
            elif kind == "candidate_pair":
                pairs.append((wrapper.rtc.id, body))
        pair = next((by_id[i][1] for i in selected_ids if i in by_id and by_id[i][0] == "candidate_pair"), None)
        if pair is None:
            pair = next((b for _, b in pairs if b.nominated and _enum_name(b, "state") == "pair_succeeded"), None)
        if pair is None:
            continue
        local = by_id.get(pair.local_candidate_id, (None, None))[1]
        remote = by_id.get(pair.remote_candidate_id, (None, None))[1]
        if local is None or remote is None:
            continue
        lt, rt = _enum_name(local, "candidate_type"), _enum_name(remote, "candidate_type")
        out[c.ice_attribute(pc, "local_candidate_type")] = lt
        out[c.ice_attribute(pc, "remote_candidate_type")] = rt
        out[c.ice_attribute(pc, "protocol")] = (local.protocol or remote.protocol or "").lower()
        out[c.ice_attribute(pc, "relayed")] = "relay" in (lt, rt)
        out[c.ice_attribute(pc, "rtt_ms")] = round(pair.current_round_trip_time * 1000.0, 3)
    return out


def _connect_error_type(error: BaseException) -> str:
    import asyncio

    if isinstance(error, asyncio.CancelledError):
        return c.ERR_CANCELLED
    text = str(error).lower()
    for needle, kind in (("timed out", "timeout"), ("timeout", "timeout"), ("401", "auth"), ("403", "auth"),
                         ("404", "http_404"), ("refused", "refused"), ("region", "region_fetch")):
        if needle in text:
            return kind
    return type(error).__name__


_EVENTS = ("reconnecting", "reconnected", "disconnected", "moved", "participant_disconnected",
           "local_track_republished", "connection_state_changed")


def _listen(room: Any, rt: RoomTrace) -> None:
    """Feed the room's events to the machine of its latest connect (listeners of an earlier connect go quiet)."""
    with _lock:
        if _listening.get(room) is rt:
            return
        _listening[room] = rt
    machine = rt.machine

    def handler(name: str):
        def on_event(*args: Any) -> None:
            with guard("room.event"):
                if _listening.get(room) is not rt or rt.closed and name != "disconnected":
                    return
                data: dict[str, Any] = {}
                if name == "disconnected" and args:
                    data["reason"] = int(args[0]) if isinstance(args[0], int) else str(args[0])
                elif name == "participant_disconnected" and args:
                    data["identity"] = getattr(args[0], "identity", "")
                elif name == "connection_state_changed" and args:
                    data["state"] = int(args[0])
                machine.room_event(name, time.time_ns(), **data)
                if name == "disconnected":
                    machine.closed(time.time_ns())
                    rt.closed = True

        return on_event

    for name in _EVENTS:
        room.on(name, handler(name))


def instrument() -> None:
    wrap(RTC_ROOM_MOD, "Room.connect", _room_connect, feature="Room.connect")
    with guard("room.bridge"):
        try:
            from .._rust import bridge
        except ImportError as e:
            warn_once("no-bridge", "lk_probe: the Rust record bridge is unavailable (%s)", e)
            return
        bridge.install(active_machine, capture_debug=_provider.options().capture_rust_debug)


def uninstrument() -> None:
    with _lock:
        for _, rt in _rooms:  # Room.on listeners stay registered but go quiet (they check this flag)
            rt.closed = True
    with guard("room.media_uninstall"):
        from . import media

        media.close_all()
    with guard("room.bridge_uninstall"):
        try:
            from .._rust import bridge
        except ImportError:
            return
        bridge.uninstall()
    global _ended
    with _lock:
        _rooms.clear()
        _ended = None
