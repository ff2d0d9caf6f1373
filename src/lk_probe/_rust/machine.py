"""The engine state machine: Rust records + FFI room events → phases of the connect path and of reconnect episodes.

Fed by the bridge (records, room events) and by the lead's Room.connect patch (``connect_started``,
``connect_finished``, ``closed``). Every public method takes ``t`` in ns since the epoch, is thread-safe (records
arrive on Rust threads, connect calls on the asyncio thread) and never raises (guarded).

What it emits (keys are opaque tuples unique per machine; ``parent=None`` means the sink's default parent: the
connect span for attempts/callback, the room's context for reconnect episodes):

connect
  rtc.attempt (i of n)                     start: connect_started / previous 'failed to connect … retrying (i/n)'
    rtc.signal (per path and region URL)   'connecting to' → 'signal connection successful|failed on vX path'
    rtc.validate (inferred)                after a non-404 signal failure, until the next record
    rtc.region_fetch (inferred)            cloud hosts only, after a failure; split from validate only when a
                                           timeout or 'unexpected signal error' fixes the boundary
    rtc.join                               signal open → 'received JoinResponse' (server_info attributes)
    rtc.pc (publisher/subscriber)          'connection change, Connecting X' → 'Connected X' | Failed | Closed
  rtc.callback                             engine connected (last PC connected / 'connection setup took') →
                                           connect callback
reconnect
  rtc.reconnect                            'received session close' | reconnecting event → 'RtcEngine successfully
                                           recovered' | reconnected | 'failed to reconnect…' | disconnected
    rtc.reconnect.attempt (resume|restart) with the same children as rtc.attempt
    rtc.reconnect.backoff                  attempt failed → next attempt
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Hashable

from .._errors import guarded, warn_once
from .. import _redact as redact
from .records import (EngineEvent, Era, classify_error, era_of_ffi_version, era_of_rtc_version, parse,
                      url_parts)

__all__ = ["EngineMachine", "EVENTS", "ERROR_TYPES", "DISCONNECT_REASONS"]

S = 1_000_000_000
REGION_FETCH_TIMEOUT = 3 * S
VALIDATE_TIMEOUT = 3 * S
JOIN_RESPONSE_TIMEOUT = 5 * S
PRE_EPISODE_WINDOW = 2 * S
MAX_PRE_EVENTS = 8
MAX_OPEN = 64

# event names this machine emits (name → attribute keys)
EVENTS: dict[str, tuple[str, ...]] = {
    "rtc.pc_failed": ("lk_probe.pc",),
    "rtc.leave": ("lk_probe.leave.reason", "lk_probe.leave.action", "lk_probe.leave.can_reconnect"),
    "rtc.session_close": ("lk_probe.reconnect.source", "lk_probe.reconnect.reason", "lk_probe.reconnect.action"),
    "rtc.watchdog": ("lk_probe.watchdog.task", "lk_probe.watchdog.message_kind"),
    "rtc.moved": (),
    "rtc.participant_disconnected": ("lk_probe.synthesized", "lk_probe.disconnect_reason"),
    "rtc.track_republished": (),
    "rtc.disconnected": ("lk_probe.disconnect_reason",),
    "rtc.data_retry_gap": ("lk_probe.retry.first_seq", "lk_probe.retry.missing"),
    "rtc.dc_closed": ("lk_probe.dc.label",),
    "rtc.connection_setup": ("lk_probe.setup_ms",),
    "rtc.join_response": ("lk_probe.server.region", "lk_probe.server.node_id", "lk_probe.server.version",
                          "lk_probe.server.protocol", "lk_probe.subscriber_primary"),
    "rtc.ready_timeout": (),
}

ERROR_TYPES = ("timeout", "refused", "http_404", "http_4xx", "http_5xx", "auth", "dns", "tls", "closed",
               "join_timeout", "reconnect_response_timeout", "pc_timeout", "pc_failed", "validate_timeout",
               "region_fetch_timeout", "region_fetch", "leave", "server_disconnect", "reconnect_failed",
               "disconnected", "cancelled", "error")

# livekit.rtc DisconnectReason ints (rust-phases.md P9)
DISCONNECT_REASONS = {0: "UNKNOWN_REASON", 1: "CLIENT_INITIATED", 2: "DUPLICATE_IDENTITY", 3: "SERVER_SHUTDOWN",
                      4: "PARTICIPANT_REMOVED", 5: "ROOM_DELETED", 6: "STATE_MISMATCH", 7: "JOIN_FAILURE",
                      8: "MIGRATION", 9: "SIGNAL_CLOSE", 10: "ROOM_CLOSED", 11: "USER_UNAVAILABLE",
                      12: "USER_REJECTED", 13: "SIP_TRUNK_FAILURE", 14: "CONNECTION_TIMEOUT", 15: "MEDIA_FAILURE",
                      16: "AGENT_ERROR"}

IDLE, CONNECTING, CONNECTED, DISCONNECTED = "idle", "connecting", "connected", "disconnected"
GAVE_UP = "gave_up"  # the engine closed after reconnection failed; the `disconnected` event may still come (1.1.21+)

_ids = itertools.count(1)


class _Out:
    """The sink as the machine sees it: redacts every string, never ends a key twice, caps open phases."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.open: dict[Hashable, str] = {}

    def start(self, phase: str, key: Hashable, t: int, attrs: dict[str, Any] | None = None,
              parent: Hashable | None = None) -> bool:
        if key in self.open:
            return False
        if len(self.open) >= MAX_OPEN:
            warn_once("rust.machine.max_open", "lk_probe: too many open Rust engine phases; dropping new ones")
            return False
        self.open[key] = phase
        self.sink.start(phase, key, t=t, parent=parent, attributes=redact.clean_attributes(attrs))
        return True

    def end(self, key: Hashable | None, t: int, error_type: str | None = None, error_message: str | None = None,
            attrs: dict[str, Any] | None = None) -> None:
        if key is None or self.open.pop(key, None) is None:
            return
        msg = redact.clean(error_message) if error_message else None
        self.sink.end(key, t=t, error_type=error_type, error_message=msg, attributes=redact.clean_attributes(attrs))

    def event(self, key: Hashable | None, name: str, t: int, attrs: dict[str, Any] | None = None) -> None:
        if key is not None and key not in self.open:
            key = None
        self.sink.event(key, name, t=t, attributes=redact.clean_attributes(attrs))

    def set_attributes(self, key: Hashable, attrs: dict[str, Any]) -> None:
        """Refine an open phase now (not only at its end), so a process killed meanwhile still reports it."""
        fn = getattr(self.sink, "set_attributes", None)
        if key in self.open and fn is not None:
            fn(key, redact.clean_attributes(attrs))


def _inferred(src: str) -> dict[str, Any]:
    return {"lk_probe.inferred": True, "lk_probe.inferred_from": src}


@dataclass
class _Container:
    """An rtc.attempt or rtc.reconnect.attempt, with the phases that run inside it."""

    key: Hashable
    n: int
    t: int
    mode: str  # "connect" | "resume" | "restart"
    cloud: bool = False
    signal: Hashable | None = None
    signal_region: bool = False
    next_signal_region: bool = False
    pending_t: int | None = None  # a signal connect failed at this time; validate/region not resolved yet
    validate: Hashable | None = None
    region: Hashable | None = None
    join: Hashable | None = None
    join_t: int = 0
    pcs: dict[str, Hashable] = field(default_factory=dict)
    ready_t: int | None = None
    first_error: str | None = None


@dataclass
class _Episode:
    key: Hashable
    t: int
    attrs: dict[str, Any] = field(default_factory=dict)
    attempt: _Container | None = None
    backoff: Hashable | None = None
    disconnect_reason: str | None = None
    terminal: str | None = None  # 1.1.21+: the server / auth ended the episode ('… during resume|restart')


class EngineMachine:
    """One per Room (the lead decides which is active). See the module docstring for the phases.

    Thread-safe: every public method takes the machine's lock, and the sink is called while it is held (a sink must
    not call back into the machine). Memory is bounded by construction: one connect attempt and one episode with a
    fixed set of child slots, at most ``MAX_PRE_EVENTS`` held events and ``MAX_OPEN`` open phases."""

    def __init__(self, sink: Any, *, version: str | None = None) -> None:
        self._out = _Out(sink)
        self._lock = threading.RLock()
        self._id = next(_ids)
        self._seq = itertools.count(1)
        self.era: str | None = version if version in (Era.API, Era.SIGNALING) else era_of_rtc_version(version)
        self._zero_based: bool | None = None if self.era is None else self.era == Era.API
        self.state = IDLE
        self._host: str | None = None
        self._port: int | None = None
        self._cloud = False
        self._attempt: _Container | None = None
        self._attempts_max = 4  # join_retries 3 (Rust default) + 1
        self._episode: _Episode | None = None
        self._pre: list[tuple[int, str, dict[str, Any]]] = []
        self._connect_t: int | None = None

    # ------------------------------------------------------------------ helpers
    def _key(self, what: str) -> Hashable:
        return ("lk_probe.rust", self._id, what, next(self._seq))

    def _open_child(self, parent: Hashable, phase: str, what: str, t: int,
                    attrs: dict[str, Any] | None) -> Hashable | None:
        """Start ``phase`` under ``parent``: its key, or None when the sink did not open it."""
        key = self._key(what)
        return key if self._out.start(phase, key, t, attrs, parent=parent) else None

    def _fingerprint(self, ev: EngineEvent) -> None:
        era = ev.era
        if ev.kind == "ffi_init":
            era = era_of_ffi_version(ev.data.get("ffi_version"))
        if era is not None and self.era is None:
            self.era = era
            if self._zero_based is None:
                self._zero_based = era == Era.API

    def _active(self) -> Hashable | None:
        """The innermost open phase (for events)."""
        c = self._episode.attempt if self._episode is not None else self._attempt
        if c is not None:
            for k in (c.signal, c.join, c.validate, c.region):
                if k is not None:
                    return k
            for k in c.pcs.values():
                return k
            return c.key
        if self._episode is not None:
            return self._episode.backoff or self._episode.key
        return None

    def _container(self) -> _Container | None:
        if self._episode is not None:
            return self._episode.attempt
        if self.state == CONNECTING:
            return self._attempt
        return None

    # ------------------------------------------------------------------ public API
    @guarded("rust.machine.connect_started")
    def connect_started(self, t: int, url: str | None = None) -> None:
        with self._lock:
            if self._attempt is not None:
                self._end_container(self._attempt, t, "cancelled", "connect restarted", outcome="cancelled")
                self._attempt = None
            if self._episode is not None:
                self._finish_episode(t, "closed")
            parts = url_parts(url) if url else {}
            self._host, self._port = parts.get("host"), parts.get("port")
            self._cloud = bool(parts.get("cloud"))
            self.state = CONNECTING
            self._connect_t = t
            self._attempts_max = 4
            self._attempt = self._start_container("rtc.attempt", 1, t, "connect")

    @guarded("rust.machine.record")
    def record(self, ev: EngineEvent | None, t: int) -> None:
        if ev is None:
            return
        with self._lock:
            self._fingerprint(ev)
            if self._pre and t - self._pre[0][0] > PRE_EPISODE_WINDOW:
                self._flush_pre()
            handler = getattr(self, "_r_" + ev.kind, None)
            if handler is not None:
                handler(ev.data, t)

    @guarded("rust.machine.feed")
    def feed(self, level: int, target: str, line: Any, module_path: str, message: str, t: int) -> None:
        """Parse and record in one call (replays, tests)."""
        self.record(parse(level, target, line, module_path, message), t)

    @guarded("rust.machine.room_event")
    def room_event(self, name: str, t: int, **data: Any) -> None:
        with self._lock:
            if name == "connection_state_changed":
                state = data.get("state")
                name = {2: "reconnecting", 1: "reconnected", 0: "disconnected"}.get(state, "")
                if not name:
                    return
                if name == "disconnected":  # the `disconnected` event that follows carries the reason
                    return
            if name == "reconnecting":
                if self.state == CONNECTED and self._episode is None:
                    self._start_episode(t, {})
            elif name == "reconnected":
                if self._episode is not None:
                    self._finish_episode(t, "recovered")
            elif name == "disconnected":
                self._disconnected(t, _reason_name(data.get("reason")))
            elif name == "moved":
                self._out.event(self._active(), "rtc.moved", t)
            elif name == "participant_disconnected":
                if self._episode is not None:
                    self._out.event(self._active(), "rtc.participant_disconnected", t, {
                        "lk_probe.synthesized": True,
                        "lk_probe.disconnect_reason": _reason_name(data.get("disconnect_reason"))})
            elif name == "local_track_republished":
                if self._episode is not None:
                    self._out.event(self._active(), "rtc.track_republished", t)

    @guarded("rust.machine.connect_finished")
    def connect_finished(self, t: int, error: str | None = None) -> None:
        with self._lock:
            c = self._attempt
            if self.state != CONNECTING:
                return
            self._attempt = None
            if error:
                self.state = IDLE
                if c is not None:
                    self._end_container(c, t, classify_error(error), error, outcome="failed")
                return
            self.state = CONNECTED
            if c is None:
                return
            ready = c.ready_t if c.ready_t is not None and c.ready_t <= t else None
            end_t = ready if ready is not None else t
            self._end_container(c, end_t, None, None, outcome="ok", inferred_src="connect callback")
            if ready is not None and ready < t:
                k = self._key("callback")
                if self._out.start("rtc.callback", k, ready):
                    self._out.end(k, t)

    @guarded("rust.machine.closed")
    def closed(self, t: int) -> None:
        with self._lock:
            self._flush_pre()
            if self._attempt is not None:
                self._end_container(self._attempt, t, "cancelled", "room closed", outcome="cancelled")
                self._attempt = None
            if self._episode is not None:
                self._finish_episode(t, "closed")
            for k in list(self._out.open):
                self._out.end(k, t)
            self.state = DISCONNECTED

    def open_count(self) -> int:
        return len(self._out.open)

    # ------------------------------------------------------------------ containers
    def _start_container(self, phase: str, n: int, t: int, mode: str) -> _Container:
        c = _Container(self._key(mode + "-attempt"), n, t, mode, cloud=self._cloud)
        if phase == "rtc.attempt":
            attrs = {"lk_probe.attempt": n, "lk_probe.attempts_max": self._attempts_max}
            self._out.start(phase, c.key, t, attrs)
        else:
            attrs = {"lk_probe.attempt": n, "lk_probe.reconnect.mode": mode}
            self._out.start(phase, c.key, t, attrs, parent=self._episode.key if self._episode else None)
        return c

    def _end_container(self, c: _Container, t: int, etype: str | None, err: str | None, *, outcome: str,
                       inferred_src: str | None = None) -> None:
        """End c and everything open inside it. With an error, open children fail with what the error says;
        without one, children still open are closed at t and marked inferred."""
        self._resolve_pending(c, t, err)
        ok_attrs = None if etype else _inferred(inferred_src or "end of the enclosing attempt")
        if c.signal is not None:
            self._out.end(c.signal, t, etype, err if etype else None, ok_attrs)
            c.signal = None
        if c.join is not None:
            if etype is not None and c.cloud and etype != "join_timeout" and t - c.join_t > JOIN_RESPONSE_TIMEOUT:
                # the join timed out, then the region fetch ran until this failure
                jt = c.join_t + JOIN_RESPONSE_TIMEOUT
                self._out.end(c.join, jt, "join_timeout", "failed to receive JoinResponse (inferred)")
                c.join = None
                self._region_span(c, jt, t, etype if etype.startswith("region") else None, err,
                                  "JoinResponse timeout (5 s) → attempt end")
            else:
                jtype = "join_timeout" if etype in ("region_fetch_timeout", "region_fetch") else etype
                self._out.end(c.join, t, jtype, err if jtype else None, ok_attrs)
                c.join = None
        for k in list(c.pcs.values()):
            self._out.end(k, t, etype, err if etype else None, ok_attrs)
        c.pcs.clear()
        if c.validate is not None:
            self._out.end(c.validate, t)
            c.validate = None
        if c.region is not None:
            rt = etype if etype and etype.startswith("region") else None
            self._out.end(c.region, t, rt, err if rt else None)
            c.region = None
        attrs: dict[str, Any] = {"lk_probe.outcome": outcome}
        if c.mode == "connect":
            attrs["lk_probe.attempts_max"] = self._attempts_max
        if etype is not None and c.first_error is not None and c.first_error != etype and (
                _from_validate(err) or etype in ("region_fetch_timeout", "region_fetch")):
            # livekit 1.1.2 replaces the cause with the validate / region fetch error: the attempt reports the
            # first failure (the signal connect), the error Rust reported stays in the message and this attribute
            attrs["lk_probe.error.reported_type"] = etype
            etype = c.first_error
        self._out.end(c.key, t, etype, err if etype else None, attrs)

    def _region_span(self, c: _Container, start: int, end: int, etype: str | None, err: str | None,
                     src: str) -> None:
        k = self._key("region")
        if self._out.start("rtc.region_fetch", k, start, _inferred(src), parent=c.key):
            self._out.end(k, end, etype, err if etype else None)

    def _validate_span(self, c: _Container, start: int, end: int, etype: str | None, err: str | None,
                       src: str) -> None:
        k = self._key("validate")
        if self._out.start("rtc.validate", k, start, _inferred(src), parent=c.key):
            self._out.end(k, end, etype, err if etype else None)

    def _resolve_pending(self, c: _Container, t: int, region_err: str | None, *, region_ok: bool = False,
                         why: str = "attempt end") -> None:
        """A signal connect failed at c.pending_t; the next record at t tells where validate/region ended."""
        t0 = c.pending_t
        if t0 is None:
            return
        c.pending_t = None
        etype = classify_error(region_err) if region_err else None
        region_failed = etype in ("region_fetch_timeout", "region_fetch") or (
            region_err is not None and "region" in region_err.lower())
        if c.validate is not None:  # non-cloud: validate was started eagerly
            vt = etype if _from_validate(region_err) else None
            self._out.end(c.validate, t, vt, region_err if vt else None)
            c.validate = None
            return
        if not c.cloud:
            return
        src = f"signal connection failed → {why}"
        if region_failed and etype == "region_fetch_timeout":
            split = max(t0, t - REGION_FETCH_TIMEOUT)
            if split > t0:
                self._validate_span(c, t0, split, None, None, src + " (region fetch = its last 3 s)")
            self._region_span(c, split, t, "region_fetch_timeout", region_err, src + " (3 s region timeout)")
        elif etype == "validate_timeout":
            split = min(t, t0 + VALIDATE_TIMEOUT)
            self._validate_span(c, t0, split, "validate_timeout", region_err, src + " (3 s validate timeout)")
            self._region_span(c, split, t, None, None, src + " (after the validate timeout)")
        else:
            self._region_span(c, t0, t, etype if region_failed else None, region_err if region_failed else None,
                              src + "; includes the validate request (not separable)")

    # ------------------------------------------------------------------ record handlers: connect path
    def _r_signal_connecting(self, d: dict[str, Any], t: int) -> None:
        c = self._container()
        if c is None:
            return
        self._resolve_pending(c, t, None, why="connecting to")
        if c.validate is not None:
            self._out.end(c.validate, t)
            c.validate = None
        if c.region is not None:
            self._out.end(c.region, t)
            c.region = None
        if c.signal is not None:
            self._out.end(c.signal, t, None, None, _inferred("next 'connecting to'"))
        if c.join is not None:
            self._out.end(c.join, t, "closed", "superseded by a new signal connect")
            c.join = None
        parts = url_parts(d.get("url", ""))
        attrs: dict[str, Any] = {}
        host = parts.get("host") or self._host
        if host:
            attrs["server.address"] = host
            attrs["server.port"] = parts.get("port") or self._port
        if parts.get("path"):
            attrs["lk_probe.signal.path"] = parts["path"]
        if c.next_signal_region:
            attrs["lk_probe.signal.region_fallback"] = True
            c.next_signal_region = False
        if parts.get("cloud"):
            c.cloud = True
        c.signal = self._open_child(c.key, "rtc.signal", "signal", t, attrs)

    def _r_signal_ok(self, d: dict[str, Any], t: int) -> None:
        c = self._container()
        if c is None or c.signal is None:
            return
        attrs = {"lk_probe.signal.path": d["path"]} if d.get("path") else None
        self._out.end(c.signal, t, attrs=attrs)
        c.signal = None
        c.join_t = t
        kind = "reconnect" if c.mode == "resume" else "join"
        c.join = self._open_child(c.key, "rtc.join", "join", t, {"lk_probe.join.response": kind})

    def _signal_failed(self, c: _Container, err: str, t: int, path: str | None) -> None:
        etype = classify_error(err)
        if c.signal is not None:
            self._out.end(c.signal, t, etype, err, {"lk_probe.signal.path": path} if path else None)
            c.signal = None
        c.first_error = c.first_error or etype
        if etype == "http_404" and path == "v1":
            c.first_error = None
            return  # the v0 fallback follows at once, no validate
        if etype == "auth" and "TokenFormat" in err:
            return
        c.pending_t = t
        if not c.cloud:
            c.validate = self._open_child(c.key, "rtc.validate", "validate", t,
                                          _inferred("signal connection failed"))

    def _r_signal_failed(self, d: dict[str, Any], t: int) -> None:
        c = self._container()
        if c is not None:
            self._signal_failed(c, d.get("error", ""), t, d.get("path"))

    def _r_v0_failed(self, d: dict[str, Any], t: int) -> None:
        c = self._container()
        if c is not None:
            self._signal_failed(c, d.get("error", ""), t, "v0")

    def _r_v1_fallback(self, d: dict[str, Any], t: int) -> None:
        pass  # the failed v1 span already says http_404; the next 'connecting to' is the v0 span

    def _r_unexpected_signal_error(self, d: dict[str, Any], t: int) -> None:
        c = self._container()
        if c is None or c.pending_t is None:
            return
        t0 = c.pending_t
        c.pending_t = None
        if c.validate is not None:
            self._out.end(c.validate, t)
            c.validate = None
        elif c.cloud:
            self._validate_span(c, t0, t, None, None, "signal connection failed → unexpected signal error")
        if c.cloud:
            c.region = self._open_child(c.key, "rtc.region_fetch", "region", t,
                                        _inferred("unexpected signal error"))

    def _r_region_connect(self, d: dict[str, Any], t: int) -> None:
        c = self._container()
        if c is None:
            return
        c.cloud = True
        if c.region is not None:
            self._out.end(c.region, t)
            c.region = None
        elif c.join is not None:  # join timed out, region fetched
            jt = min(t, c.join_t + JOIN_RESPONSE_TIMEOUT)
            self._out.end(c.join, jt, "join_timeout", "failed to receive JoinResponse (inferred)")
            c.join = None
            self._region_span(c, jt, t, None, None, "JoinResponse timeout (5 s) → fallback connection to")
        else:
            self._resolve_pending(c, t, None, region_ok=True, why="fallback connection to")
        c.next_signal_region = True

    def _r_region_failed(self, d: dict[str, Any], t: int) -> None:
        c = self._container()
        if c is None:
            return
        err = d.get("error", "region fetch failed")
        etype = classify_error(err)
        if etype not in ("region_fetch_timeout", "region_fetch"):
            etype = "region_fetch"
        c.cloud = True
        if c.region is not None:
            self._out.end(c.region, t, etype, err)
            c.region = None
        elif c.join is not None:
            jt = min(t, c.join_t + JOIN_RESPONSE_TIMEOUT)
            self._out.end(c.join, jt, "join_timeout", "failed to receive JoinResponse (inferred)")
            c.join = None
            start = max(jt, t - REGION_FETCH_TIMEOUT) if etype == "region_fetch_timeout" else jt
            self._region_span(c, start, t, etype, err, "JoinResponse timeout (5 s) → failed to fetch region urls")
        elif c.pending_t is not None:
            self._resolve_pending(c, t, err if "region" in err.lower() else "region error: " + err,
                                  why="failed to fetch region urls")
        else:
            self._region_span(c, t, t, etype, err, "failed to fetch region urls (start unknown)")

    _r_region_stale = _r_region_failed

    def _r_join_response(self, d: dict[str, Any], t: int) -> None:
        c = self._container()
        if c is None:
            return
        attrs = {}
        for src, dst in (("region", "lk_probe.server.region"), ("node_id", "lk_probe.server.node_id"),
                         ("version", "lk_probe.server.version"), ("protocol", "lk_probe.server.protocol"),
                         ("subscriber_primary", "lk_probe.subscriber_primary")):
            if src in d:
                attrs[dst] = d[src]
        if c.join is not None:
            self._out.end(c.join, t, attrs=attrs)
            c.join = None
            return
        if c.signal is not None:
            self._out.end(c.signal, t, attrs=_inferred("received JoinResponse"))
            c.signal = None
        self._out.event(c.key, "rtc.join_response", t, attrs)

    def _r_reconnect_response(self, d: dict[str, Any], t: int) -> None:
        c = self._container()
        if c is None:
            return
        if c.join is not None:
            self._out.end(c.join, t)
            c.join = None
        elif c.signal is not None:
            self._out.end(c.signal, t, attrs=_inferred("received reconnect response"))
            c.signal = None

    def _r_pc_change(self, d: dict[str, Any], t: int) -> None:
        c = self._container()
        pc, state = d["pc"], d["state"]
        if c is None:
            return
        k = c.pcs.get(pc)
        if state == "Connecting":
            if k is None:
                k = self._key("pc-" + pc)
                if self._out.start("rtc.pc", k, t, {"lk_probe.pc": pc}, parent=c.key):
                    c.pcs[pc] = k
        elif state == "Connected":
            if k is not None:
                self._out.end(k, t)
                del c.pcs[pc]
            c.ready_t = t
        elif state in ("Failed", "Closed", "Disconnected"):
            if k is not None and state != "Disconnected":
                self._out.end(k, t, "pc_failed" if state == "Failed" else "closed",
                              f"connection change, {state} {pc}")
                del c.pcs[pc]

    def _r_setup_took(self, d: dict[str, Any], t: int) -> None:
        c = self._container()
        if c is None:
            return
        c.ready_t = t
        self._out.event(c.key, "rtc.connection_setup", t, {"lk_probe.setup_ms": d.get("ms")})

    def _r_connect_retry(self, d: dict[str, Any], t: int) -> None:
        if self.state != CONNECTING or self._attempt is None:
            return
        c = self._attempt
        self._attempts_max = d["n"] + 1
        err = d.get("error", "")
        self._end_container(c, t, classify_error(err), err, outcome="failed")
        nxt = d["i"] + 1
        self._attempt = self._start_container("rtc.attempt", nxt, t, "connect")

    def _r_connect_error(self, d: dict[str, Any], t: int) -> None:
        if self.state != CONNECTING or self._attempt is None:
            return
        err = d.get("error", "")
        self._end_container(self._attempt, t, classify_error(err), err, outcome="failed")
        self._attempt = None

    def _r_auth_rejected_connect(self, d: dict[str, Any], t: int) -> None:
        if self.state != CONNECTING or self._attempt is None:
            return
        self._end_container(self._attempt, t, "auth", "authentication rejected during connect" + d.get("error", ""),
                            outcome="failed")
        self._attempt = None

    def _r_ready_timeout(self, d: dict[str, Any], t: int) -> None:
        self._out.event(self._active(), "rtc.ready_timeout", t)

    def _r_ffi_init(self, d: dict[str, Any], t: int) -> None:
        pass  # fingerprinting only

    # ------------------------------------------------------------------ record handlers: reconnect episodes
    def _start_episode(self, t: int, attrs: dict[str, Any], inferred_src: str | None = None) -> None:
        ep = _Episode(self._key("reconnect"), t, dict(attrs))
        a = dict(attrs)
        if inferred_src:
            a.update(_inferred(inferred_src))
        if not self._out.start("rtc.reconnect", ep.key, t, a):
            return
        self._episode = ep
        pre, self._pre = self._pre, []
        for pt, name, pattrs in pre:
            self._out.event(ep.key, name, pt, pattrs)

    def _finish_episode(self, t: int, outcome: str, etype: str | None = None, err: str | None = None) -> None:
        ep = self._episode
        if ep is None:
            return
        self._episode = None
        if ep.attempt is not None:
            if outcome == "recovered":
                self._end_container(ep.attempt, t, None, None, outcome="ok", inferred_src="recovered")
            else:
                self._end_container(ep.attempt, t, etype or "reconnect_failed", err or outcome, outcome="failed")
        if ep.backoff is not None:
            self._out.end(ep.backoff, t)
        attrs = dict(ep.attrs)
        attrs["lk_probe.outcome"] = outcome
        if ep.disconnect_reason:
            attrs["lk_probe.disconnect_reason"] = ep.disconnect_reason
        self._out.end(ep.key, t, etype, err, attrs)
        if outcome == "recovered":
            self.state = CONNECTED

    def _event_or_pre(self, name: str, t: int, attrs: dict[str, Any]) -> None:
        """Events that usually precede the session close by a few ms: held briefly so they land on the episode."""
        if self._episode is None and self.state == CONNECTED:
            if len(self._pre) >= MAX_PRE_EVENTS:
                self._flush_pre()
            self._pre.append((t, name, attrs))
            return
        self._out.event(self._active(), name, t, attrs)

    def _flush_pre(self) -> None:
        pre, self._pre = self._pre, []
        for pt, name, attrs in pre:
            self._out.event(None, name, pt, attrs)

    def _r_session_close(self, d: dict[str, Any], t: int) -> None:
        attrs = {"lk_probe.reconnect.source": d.get("source"), "lk_probe.reconnect.reason": d.get("reason"),
                 "lk_probe.reconnect.action": d.get("action")}
        ep = self._episode
        if ep is None:
            if self.state != CONNECTED:
                return
            self._start_episode(t, attrs)
        elif not ep.attrs:  # the episode started from the `reconnecting` event, which outran this record
            ep.attrs.update(attrs)
            self._out.set_attributes(ep.key, attrs)
        else:
            self._out.event(self._active(), "rtc.session_close", t, attrs)

    def _attempt_start(self, d: dict[str, Any], t: int, mode: str) -> None:
        i = d["i"]
        if self._zero_based is None:
            self._zero_based = i == 0
        n = i + 1 if self._zero_based else i
        if self._episode is None:
            if self.state not in (CONNECTED,):
                return
            self._start_episode(t, {}, inferred_src=f"{'resuming' if mode == 'resume' else 'restarting'} "
                                                    "connection... attempt")
            if self._episode is None:
                return
        ep = self._episode
        if ep.attempt is not None:
            self._end_container(ep.attempt, t, "error", "next attempt started", outcome="failed")
            ep.attempt = None
        if ep.backoff is not None:
            self._out.end(ep.backoff, t)
            ep.backoff = None
        ep.attempt = self._start_container("rtc.reconnect.attempt", n, t, mode)

    def _r_resume_attempt(self, d: dict[str, Any], t: int) -> None:
        self._attempt_start(d, t, "resume")

    def _r_restart_attempt(self, d: dict[str, Any], t: int) -> None:
        self._attempt_start(d, t, "restart")

    def _attempt_failed(self, d: dict[str, Any], t: int, *, backoff: bool = True, etype: str | None = None) -> None:
        ep = self._episode
        if ep is None or ep.attempt is None:
            return
        err = d.get("error", "")
        self._end_container(ep.attempt, t, etype or classify_error(err), err, outcome="failed")
        ep.attempt = None
        if backoff:
            ep.backoff = self._open_child(ep.key, "rtc.reconnect.backoff", "backoff", t, None)

    def _r_resume_failed(self, d: dict[str, Any], t: int) -> None:
        self._attempt_failed(d, t)

    _r_restart_failed = _r_resume_failed

    def _r_terminal_resume(self, d: dict[str, Any], t: int) -> None:
        err = d.get("error", "")
        etype = "auth" if err.startswith("auth") else "server_disconnect"
        if self._episode is not None:
            self._episode.terminal = etype
            if d.get("reason"):
                self._episode.disconnect_reason = d["reason"]
        self._attempt_failed({"error": err + (f": {d['reason']}" if d.get("reason") else "")}, t,
                             backoff=False, etype=etype)

    _r_terminal_restart = _r_terminal_resume

    def _r_retry_now(self, d: dict[str, Any], t: int) -> None:
        ep = self._episode
        if ep is not None and ep.backoff is not None:
            self._out.end(ep.backoff, t, attrs={"lk_probe.retry_now": True})
            ep.backoff = None

    def _r_recovered(self, d: dict[str, Any], t: int) -> None:
        if self._episode is not None:
            self._finish_episode(t, "recovered")

    def _r_gave_up(self, d: dict[str, Any], t: int) -> None:
        if self._episode is not None:
            # livekit 1.1.2 never emits `disconnected` after this line: the episode ends here in every version
            term = self._episode.terminal
            self._finish_episode(t, "disconnected" if term else "gave_up", term or "reconnect_failed",
                                 "failed to reconnect to the livekit room")
        if self.state != CONNECTING:
            self.state = GAVE_UP

    def _disconnected(self, t: int, reason: str | None) -> None:
        if self.state == CONNECTING:
            return  # the connect callback reports it
        if self._episode is None and self.state == CONNECTED and reason not in (None, "CLIENT_INITIATED"):
            # a server-side disconnect whose leave record has not arrived (records and events travel apart)
            self._start_episode(t, {"lk_probe.reconnect.reason": reason, "lk_probe.reconnect.action": "Disconnect"},
                                inferred_src="disconnected event")
        if self._episode is not None:
            if reason:
                self._episode.disconnect_reason = reason
            cancelled = reason == "CLIENT_INITIATED"
            self._finish_episode(t, "disconnected", None if cancelled else "disconnected",
                                 None if cancelled else f"disconnected: {reason or 'unknown'}")
        if self.state not in (DISCONNECTED, IDLE):
            self._flush_pre()
            self._out.event(None, "rtc.disconnected", t, {"lk_probe.disconnect_reason": reason or "UNKNOWN_REASON"})
        self.state = DISCONNECTED

    def _r_room_disconnected(self, d: dict[str, Any], t: int) -> None:
        reason = _camel_to_upper(d.get("reason"))
        if self._episode is not None:
            self._disconnected(t, reason)

    def _r_pc_failed(self, d: dict[str, Any], t: int) -> None:
        c = self._container()
        if c is not None and d["pc"] in c.pcs:
            self._out.end(c.pcs.pop(d["pc"]), t, "pc_failed", f"{d['pc'].capitalize()} pc state failed")
        self._event_or_pre("rtc.pc_failed", t, {"lk_probe.pc": d["pc"]})

    def _r_leave_request(self, d: dict[str, Any], t: int) -> None:
        attrs = {"lk_probe.leave.reason": d.get("reason"), "lk_probe.leave.action": d.get("action")}
        if "can_reconnect" in d:
            attrs["lk_probe.leave.can_reconnect"] = d["can_reconnect"] == "true"
        if d.get("action") == "Disconnect":
            # no session close is logged for a Disconnect: the leave itself starts the episode, which the
            # `disconnected` event ends
            if self._episode is None and self.state == CONNECTED:
                self._start_episode(t, {"lk_probe.reconnect.source": "server request to leave",
                                        "lk_probe.reconnect.reason": d.get("reason"),
                                        "lk_probe.reconnect.action": "Disconnect"})
            if self._episode is not None:
                self._episode.disconnect_reason = d.get("reason")
        self._event_or_pre("rtc.leave", t, attrs)

    def _r_dc_closed(self, d: dict[str, Any], t: int) -> None:
        self._event_or_pre("rtc.dc_closed", t, {"lk_probe.dc.label": d.get("label")})

    def _watchdog(self, task: str, d: dict[str, Any], t: int) -> None:
        if self.state == IDLE:
            return
        self._out.event(self._active(), "rtc.watchdog", t, {"lk_probe.watchdog.task": task,
                                                             "lk_probe.watchdog.message_kind": d.get("message_kind")})

    def _r_watchdog_signal(self, d: dict[str, Any], t: int) -> None:
        self._watchdog("signal_event", d, t)

    def _r_watchdog_rtc(self, d: dict[str, Any], t: int) -> None:
        self._watchdog("rtc_event", d, t)

    def _r_watchdog_session(self, d: dict[str, Any], t: int) -> None:
        self._watchdog("session_event", d, t)

    def _r_watchdog_engine(self, d: dict[str, Any], t: int) -> None:
        self._watchdog("engine_event", d, t)

    def _r_watchdog_ffi(self, d: dict[str, Any], t: int) -> None:
        self._watchdog("ffi_room_event", d, t)

    def _r_wrong_packet_seq(self, d: dict[str, Any], t: int) -> None:
        attrs = {"lk_probe.retry.first_seq": d.get("first")}
        if "missing" in d:
            attrs["lk_probe.retry.missing"] = d["missing"]
        self._out.event(self._active(), "rtc.data_retry_gap", t, attrs)

    def _r_synth_disconnect(self, d: dict[str, Any], t: int) -> None:
        if self.state != IDLE:
            self._out.event(self._active(), "rtc.participant_disconnected", t, {"lk_probe.synthesized": True})


def _from_validate(err: str | None) -> bool:
    """Errors only the validate request produces (SignalError::Client/Server, or its timeout)."""
    if not err:
        return False
    return "Client(" in err or "Server(" in err or "client error:" in err or "server error:" in err \
        or "validate request timed out" in err


def _reason_name(reason: Any) -> str | None:
    if reason is None:
        return None
    if isinstance(reason, int):
        return DISCONNECT_REASONS.get(reason, str(reason))
    return str(reason)[:64]


def _camel_to_upper(name: str | None) -> str | None:
    """Rust Debug ``UnknownReason`` → ``UNKNOWN_REASON`` (the Python enum names)."""
    if not name:
        return None
    out = []
    for i, ch in enumerate(name[:64]):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.upper())
    return "".join(out)
