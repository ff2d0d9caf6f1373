"""The hook into ``livekit.rtc._ffi_client``: every Rust log record (DEBUG included) and the room events reach the
active :class:`~lk_probe._rust.machine.EngineMachine`; the user's ``livekit`` logger sees exactly what it saw before.

How:

* ``ffi_event_callback`` logs each record with ``_ffi_client.logger.log(level, "%s:%s:%s - %s", target, line,
  module_path, message)`` — a module-global looked up per call. :func:`install` replaces it with a proxy; the proxy
  parses the record, hands it to ``get_machine()``, then forwards to the real logger what the user would have seen.
* DEBUG records of ``livekit*``/``libwebrtc`` are dropped *before* the logger call unless ``LIVEKIT_RTC_DEBUG`` is
  ``1``/``true`` (read per record). While installed the bridge sets it to ``1`` so that the Rust DEBUG phase
  markers (signal connected, JoinResponse, PC state) arrive whatever level livekit-agents gave the ``livekit``
  logger; the proxy then drops those DEBUG records again unless the user had set the variable. The user's value is
  kept in ``LK_PROBE_SAVED_LIVEKIT_RTC_DEBUG`` (so a child process that inherits the environment and installs the
  bridge too knows what the user wanted) and restored by :func:`uninstall`.
* libwebrtc's DEBUG flood takes a fast path: one level compare and one string compare, no regex, no machine.
* Room events (opt-in, ``install(..., room_events=True)``): ``FfiClient.instance.queue.subscribe(filter_fn=…)`` calls
  the filter synchronously on the Rust callback thread, so a filter that forwards the event to the machine and
  returns False gives exact times without queueing anything. It is attached as soon as the FFI client exists (the
  bridge never creates it: doing so before a fork breaks livekit).

Records and events arrive on Rust threads: the machine locks; everything here is guarded and never raises into the
callback.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from .._errors import guard, report, warn_once
from .records import parse

__all__ = ["install", "uninstall", "installed", "attach_events", "set_user_debug", "set_tap"]

ENV = "LIVEKIT_RTC_DEBUG"
SAVED_ENV = "LK_PROBE_SAVED_LIVEKIT_RTC_DEBUG"
_UNSET = "<unset>"
_DEBUG = logging.DEBUG

_lock = threading.RLock()
_state: dict[str, Any] = {}

_ROOM_EVENTS = frozenset({"connection_state_changed", "reconnecting", "reconnected", "disconnected", "moved",
                          "participant_disconnected", "local_track_republished"})


def _none() -> None:
    return None


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true")


class _LoggerProxy:
    """Stands in for ``_ffi_client.logger`` (a ``logging.Logger``)."""

    __slots__ = ("_real", "_get_machine", "_user_debug", "_time_ns", "_tap", "__weakref__")

    def __init__(self, real: logging.Logger, get_machine: Callable[[], Any], user_debug: bool) -> None:
        self._real = real
        self._get_machine = get_machine
        self._user_debug = user_debug
        self._time_ns = time.time_ns
        self._tap: Callable[..., None] | None = None  # capture hook (tests/rust/capture.py)

    def log(self, level: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
        # fast path: libwebrtc DEBUG (the flood). args = (target, line, module_path, message)
        if level == _DEBUG and args and args[0] == "libwebrtc":
            if self._user_debug:
                self._real.log(level, msg, *args, stacklevel=2, **kwargs)
            return
        if len(args) == 4 and msg == "%s:%s:%s - %s":
            target = args[0]
            if target.__class__ is str:
                self._observe(level, args)
                if level == _DEBUG and not self._user_debug and target.startswith("livekit"):
                    return
        # stacklevel=2: the LogRecord's pathname/lineno/funcName stay those of livekit's ffi_event_callback
        self._real.log(level, msg, *args, stacklevel=kwargs.pop("stacklevel", 1) + 1, **kwargs)

    def _observe(self, level: int, args: tuple) -> None:
        t = self._time_ns()
        try:
            if self._tap is not None:
                self._tap(t, level, *args)
            ev = parse(level, args[0], args[1], args[2], args[3])
            if ev is None:
                return
            if _state.get("queue") is None and _state.get("room_events"):  # the FFI client exists now
                attach_events()
            m = self._get_machine()
            if m is not None:
                m.record(ev, t)
        except Exception as exc:  # noqa: BLE001 - never into the Rust callback thread
            report("rust.bridge.record", exc)

    def __getattr__(self, name: str) -> Any:  # error(), warning(), isEnabledFor(), handlers, ...
        return getattr(self._real, name)


def _event_filter(event: Any) -> bool:
    """FfiQueue filter: runs on the Rust callback thread for EVERY FfiEvent (audio frames included) → cheap."""
    try:
        if event.WhichOneof("message") != "room_event":
            return False
        re_ = event.room_event
        name = re_.WhichOneof("message")
        if name not in _ROOM_EVENTS:
            return False
        if not _state.get("room_events"):
            return False
        t = time.time_ns()
        get_machine = _state.get("get_machine")
        m = get_machine() if get_machine is not None else None
        if m is None:
            return False
        data: dict[str, Any] = {"room_handle": re_.room_handle}
        body = getattr(re_, name)
        if name == "connection_state_changed":
            data["state"] = int(body.state)
        elif name == "disconnected":
            data["reason"] = int(body.reason)
        elif name == "participant_disconnected":
            data["disconnect_reason"] = int(body.disconnect_reason)
        m.room_event(name, t, **data)
    except Exception as exc:  # noqa: BLE001
        report("rust.bridge.room_event", exc)
    return False  # never queue anything: the filter exists only for its timing


class _NoLoop:
    """The queue wants an event loop; the filter always says False, so it is never used."""

    def call_soon_threadsafe(self, *a: Any, **k: Any) -> None:
        pass


def attach_events() -> bool:
    """Subscribe the room-event filter if the FFI client exists (never creates it). Called by the bridge on the
    first phase record; the room patch may call it after creating a Room to get events before any record."""
    with _lock:
        if not _state.get("installed") or not _state.get("room_events"):
            return False
        if _state.get("queue") is not None:
            return bool(_state["queue"])
        try:
            from livekit.rtc import _ffi_client
        except Exception:  # noqa: BLE001
            return False
        client = getattr(_ffi_client.FfiClient, "_instance", None)
        if client is None:
            return False
        _state["queue"] = False  # tried: a failure is reported once, not retried per record
        with guard("rust.bridge.subscribe"):
            q = client.queue
            _state["queue"] = (q, q.subscribe(_NoLoop(), filter_fn=_event_filter))  # type: ignore[arg-type]
        return bool(_state.get("queue"))


def install(get_machine: Callable[[], Any], *, room_events: bool = False, capture_debug: bool = True) -> bool:
    """Hook the Rust records; route them to ``get_machine()`` (None = nobody listens). Idempotent: a second call
    only replaces ``get_machine`` (and the room_events choice). Returns False when livekit.rtc is missing or
    unsupported.

    ``room_events=True`` also feeds the room events (connection_state_changed, reconnecting, reconnected,
    disconnected, moved, participant_disconnected, local_track_republished) to ``get_machine().room_event`` from the
    FFI queue filter, with times taken on the Rust thread (exact to well under 1 ms). Off by default: the filter
    sees the events of every room in the process and routes them to the one active machine, so with several rooms
    per-room ``Room.on`` handlers are the right source; use one or the other, never both (events would count twice).

    ``capture_debug=False`` leaves LIVEKIT_RTC_DEBUG alone: only what the user's setting lets through is seen (no
    signal-connected, JoinResponse or PC markers unless the user enabled them), and everything is forwarded."""
    with _lock:
        if _state.get("installed"):
            _state["get_machine"] = get_machine
            _state["proxy"]._get_machine = get_machine
            _state["room_events"] = room_events
            return True
        try:
            from livekit.rtc import _ffi_client
        except Exception as exc:  # noqa: BLE001
            warn_once("rust.bridge.import", "lk_probe: livekit.rtc not importable, Rust phases off: %r", exc)
            return False
        real = getattr(_ffi_client, "logger", None)
        if not isinstance(real, logging.Logger):
            if isinstance(real, _LoggerProxy):  # left by an earlier copy of this module (reload in tests)
                real = real._real
            else:
                warn_once("rust.bridge.logger", "lk_probe: livekit.rtc._ffi_client.logger is %r, not a Logger; "
                          "Rust phases off", type(real))
                return False
        if not hasattr(_ffi_client, "ffi_event_callback"):
            warn_once("rust.bridge.callback", "lk_probe: this livekit.rtc has no ffi_event_callback; Rust phases off")
            return False
        saved = os.environ.get(SAVED_ENV)
        current = os.environ.get(ENV)
        if saved is not None and current == "1":  # inherited from a parent process where the bridge was installed
            user_value = None if saved == _UNSET else saved
        else:
            user_value = current
        proxy = _LoggerProxy(real, get_machine, _truthy(user_value) or not capture_debug)
        _state.update(installed=True, module=_ffi_client, real=real, proxy=proxy, get_machine=get_machine,
                      user_value=user_value, queue=None, room_events=room_events, capture_debug=capture_debug)
        if capture_debug:
            os.environ[SAVED_ENV] = _UNSET if user_value is None else user_value
            os.environ[ENV] = "1"
        _ffi_client.logger = proxy
    attach_events()
    return True


def uninstall() -> None:
    """Undo :func:`install`: the real logger back, the user's LIVEKIT_RTC_DEBUG back, the filter unsubscribed."""
    with _lock:
        if not _state.get("installed"):
            return
        mod = _state["module"]
        proxy = _state["proxy"]
        if getattr(mod, "logger", None) is proxy:
            mod.logger = _state["real"]
        # if someone wrapped the proxy after us, it stays in their chain: make it a plain pass-through (the env var
        # filter upstream is the user's own again)
        proxy._get_machine = _none
        proxy._user_debug = True
        proxy._tap = None
        if _state.get("capture_debug"):
            user_value = _state.get("user_value")
            if user_value is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = user_value
            os.environ.pop(SAVED_ENV, None)
        q = _state.get("queue")
        if q:
            with guard("rust.bridge.unsubscribe"):
                q[0].unsubscribe(q[1])
        _state.clear()


def set_tap(fn: Callable[..., None] | None) -> None:
    """Test hook: ``fn(t, level, target, line, module_path, message)`` for every non-libwebrtc record, with the
    time the machine gets (used by the capture script to record replayable sequences)."""
    with _lock:
        proxy = _state.get("proxy")
        if proxy is not None:
            proxy._tap = fn


def installed() -> bool:
    return bool(_state.get("installed"))


def set_user_debug(enabled: bool) -> None:
    """The user wants livekit/libwebrtc DEBUG records on the ``livekit`` logger after all (what setting
    LIVEKIT_RTC_DEBUG at runtime did without lk_probe)."""
    with _lock:
        proxy = _state.get("proxy")
        if proxy is not None:
            proxy._user_debug = bool(enabled)
            _state["user_value"] = "1" if enabled else None
