"""The engine state machine: Rust records + FFI room events → phases of the connect path and of reconnect episodes.

Fed by the bridge (records, room events) and by the Room.connect patch (``connect_started``,
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
    rtc.pc (publisher/subscriber)          'connection change, Connecting X' → 'Connected X' | Failed | Closed;
                                           when both records arrive after the attempt ended well (connect
                                           callback, recovery), inferred, ending when the attempt ended
                                           (also after the room closed: its last log batch comes later);
                                           PC records before the attempt's JoinResponse are an earlier room's
  rtc.callback                             engine connected (last PC connected / 'connection setup took') →
                                           connect callback (none when the PC's records came after it)
reconnect
  rtc.reconnect                            'received session close' | reconnecting event → 'RtcEngine successfully
                                           recovered' | reconnected | 'failed to reconnect…' | disconnected
                                           (a reconnected event that outran the attempt's records ends it when
                                           they came, at the event's time, the late phases clamped within it)
    rtc.reconnect.attempt (resume|restart) with the same children as rtc.attempt
    rtc.reconnect.backoff                  attempt failed → next attempt
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Hashable

from .. import _catalogue as c
from .._errors import guarded
from .._sink import PhaseSink
from .attempt import LATE_PC_WINDOW, Attempt
from .out import MAX_OPEN, Clamped, Out, inferred
from .records import (EngineEvent, Era, classify_error, era_of_ffi_version, era_of_rtc_version, parse,
                      url_parts)

__all__ = ["EngineMachine"]

S = 1_000_000_000
PRE_EPISODE_WINDOW = 2 * S
# the engine's records can reach Python after the `reconnected` event they precede (log batches): the episode the
# event recovered stays open that long for them (or until its 'RtcEngine successfully recovered' record)
LATE_EPISODE_WINDOW = LATE_PC_WINDOW
MAX_PRE_EVENTS = 8

IDLE, CONNECTING, CONNECTED, DISCONNECTED = "idle", "connecting", "connected", "disconnected"
GAVE_UP = "gave_up"  # the engine closed after reconnection failed; the `disconnected` event may still come (1.1.21+)

# watchdog record kind → the engine task it names ('<task> taking too much time')
WATCHDOG_TASKS = {"watchdog_signal": "signal_event", "watchdog_rtc": "rtc_event", "watchdog_session": "session_event",
                  "watchdog_engine": "engine_event", "watchdog_ffi": "ffi_room_event"}

_ids = itertools.count(1)


@dataclass
class _Episode:
    key: Hashable
    t: int
    attrs: dict[str, Any] = field(default_factory=dict)
    attempt: Attempt | None = None
    backoff: Hashable | None = None
    disconnect_reason: str | None = None
    terminal: str | None = None  # 1.1.21+: the server / auth ended the episode ('… during resume|restart')
    attempts: int = 0
    reconnecting: bool = False  # its `reconnecting` event came: a `reconnected` event before it is not its end
    # the `reconnected` event came at recovered_t: the episode ends there, once the records it outran are placed
    # (by clamped, within the episode's time)
    recovered_t: int | None = None
    clamped: Clamped | None = None


class EngineMachine:
    """One per Room (the Room.connect patch decides which one the records go to). See the module docstring for
    the phases; the phases inside one attempt are :class:`~lk_probe._rust.attempt.Attempt`'s.

    Thread-safe: every public method takes the machine's lock, and the sink is called while it is held (a sink must
    not call back into the machine). Memory is bounded by construction: one connect attempt and one episode with a
    fixed set of child slots, at most ``MAX_PRE_EVENTS`` held events and ``MAX_OPEN`` open phases."""

    def __init__(self, sink: PhaseSink, *, version: str | None = None) -> None:
        self._out = Out(sink)
        self._lock = threading.RLock()
        self._id = next(_ids)
        self._seq = itertools.count(1)
        self.era: str | None = version if version in (Era.API, Era.SIGNALING) else era_of_rtc_version(version)
        self._zero_based: bool | None = None if self.era is None else self.era == Era.API
        self.state = IDLE
        self._host: str | None = None
        self._port: int | None = None
        self._cloud = False
        self._attempt: Attempt | None = None
        self._late: Attempt | None = None  # ended well before any PC record: late PC records still go to it
        self._attempts_max = 4  # join_retries 3 (Rust default) + 1
        self._episode: _Episode | None = None
        self._ping_timeout: int | None = None  # the session's, from its JoinResponse (s)
        self._pre: list[tuple[int, str, dict[str, Any]]] = []

    # ------------------------------------------------------------------ helpers
    def _key(self, what: str) -> Hashable:
        return ("lk_probe.rust", self._id, what, next(self._seq))

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
        a = self._episode.attempt if self._episode is not None else self._attempt
        if a is not None:
            return a.innermost()
        if self._episode is not None:
            return self._episode.backoff or self._episode.key
        return None

    def _container(self) -> Attempt | None:
        if self._episode is not None:
            return self._episode.attempt
        if self.state == CONNECTING:
            return self._attempt
        return None

    # ------------------------------------------------------------------ public API
    @guarded("rust.machine.connect_started")
    def connect_started(self, t: int, url: str | None = None) -> None:
        with self._lock:
            self._settle(t, force=True)
            self._end_connect(t, "cancelled", "connect restarted", outcome="cancelled")
            self._late = None
            if self._episode is not None:
                self._finish_episode(t, "closed")
            parts = url_parts(url) if url else {}
            self._host, self._port = parts.get("host"), parts.get("port")
            self._cloud = bool(parts.get("cloud"))
            self.state = CONNECTING
            self._attempts_max = 4
            self._attempt = self._start_attempt(1, t, "connect")

    @guarded("rust.machine.record")
    def record(self, ev: EngineEvent | None, t: int) -> None:
        if ev is None:
            return
        with self._lock:
            if self.state == DISCONNECTED and ev.kind != "pc_change":
                return  # the room is gone: only the late PC records of its last attempt are still placed
            self._fingerprint(ev)
            if ev.kind == "join_response" and ev.data.get("ping_timeout"):
                self._ping_timeout = ev.data["ping_timeout"]
            self._settle(t)
            if self._pre and t - self._pre[0][0] > PRE_EPISODE_WINDOW:
                self._flush_pre()
            on_attempt = Attempt.RECORDS.get(ev.kind)
            if on_attempt is not None:  # a phase inside the current attempt
                a = self._container()
                if a is not None:
                    on_attempt(a, ev.data, t)
                elif ev.kind == "pc_change" and self._late is not None and not self._late.late_pc_change(ev.data, t):
                    self._late = None
                return
            task = WATCHDOG_TASKS.get(ev.kind)
            if task is not None:
                self._watchdog(task, ev.data, t)
                return
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
            self._settle(t, force=name in ("reconnecting", "disconnected"))
            if name == "reconnecting":
                if self.state == CONNECTED and self._episode is None:
                    self._start_episode(t, {})
                if self._episode is not None:
                    self._episode.reconnecting = True
            elif name == "reconnected":
                ep = self._episode
                # without its `reconnecting` event first, a connected state is the room's initial one (livekit
                # 1.1.2 can deliver it after the connect returned, once a session close has already begun an episode)
                if ep is not None and ep.recovered_t is None and ep.reconnecting:
                    if ep.attempt is not None and ep.attempt.joined_t is not None:
                        self._finish_episode(t, "recovered")  # what is left to come are its PC records
                    else:  # the records of the attempt that recovered are still on their way
                        self._recovered_event(ep, t)
            elif name == "disconnected":
                self._disconnected(t, _reason_name(data.get("reason")))
            elif name == "moved":
                self._out.event(self._active(), c.EV_MOVED, t)
            elif name == "participant_disconnected":
                if self._episode is not None:
                    self._out.event(self._active(), c.EV_PARTICIPANT_DISCONNECTED, t, {
                        c.SYNTHESIZED: True,
                        c.DISCONNECT_REASON: _reason_name(data.get("disconnect_reason"))})
            elif name == "local_track_republished":
                if self._episode is not None:
                    self._out.event(self._active(), c.EV_TRACK_REPUBLISHED, t)

    @guarded("rust.machine.connect_finished")
    def connect_finished(self, t: int, error: str | None = None) -> None:
        with self._lock:
            if self.state != CONNECTING:
                return
            if error:
                self.state = IDLE
                self._end_connect(t, classify_error(error), error, outcome="failed")
                return
            self.state = CONNECTED
            a = self._attempt
            if a is None:
                return
            ready = a.ready_t if a.ready_t is not None and a.ready_t <= t else None
            end_t = ready if ready is not None else t
            self._end_connect(end_t, None, None, outcome="ok", inferred_src="connect callback",
                              late="pc records after connect callback")
            self._late = a if a.late else None
            if ready is not None and ready < t:
                k = self._key("callback")
                if self._out.start("rtc.callback", k, ready):
                    self._out.end(k, t)

    @guarded("rust.machine.closed")
    def closed(self, t: int) -> None:
        with self._lock:
            self._flush_pre()
            self._settle(t, force=True)
            self._end_connect(t, "cancelled", "room closed", outcome="cancelled")
            if self._episode is not None:
                self._finish_episode(t, "closed")
            for k in list(self._out.open):
                self._out.end(k, t)
            self.state = DISCONNECTED

    def awaits_late(self, t: int) -> bool:
        """Whether PC records arriving at ``t`` can still belong to the attempt that ended well last (see
        :meth:`Attempt.late_pc_change`); they come in the room's last log batch, often after the room closed."""
        with self._lock:
            a = self._late
            return a is not None and a.late is not None and t - a.end_t <= LATE_PC_WINDOW

    def open_count(self) -> int:
        return len(self._out.open)

    # ------------------------------------------------------------------ attempts
    def _start_attempt(self, n: int, t: int, mode: str) -> Attempt:
        ep = self._episode
        out = ep.clamped if ep is not None and ep.clamped is not None else self._out
        a = Attempt(out, self._key, n, t, mode, cloud=self._cloud, host=self._host, port=self._port)
        if mode == "connect":
            attrs: dict[str, Any] = {c.ATTEMPT: n, c.ATTEMPTS_MAX: self._attempts_max}
            self._out.start("rtc.attempt", a.key, t, attrs)
        else:
            attrs = {c.ATTEMPT: n, c.RECONNECT_MODE: mode}
            if out is not self._out:
                attrs.update(inferred("attempt record after the reconnected event"))
            out.start("rtc.reconnect.attempt", a.key, t, attrs, parent=ep.key if ep else None)
        return a

    def _end_connect(self, t: int, etype: str | None, err: str | None, *, outcome: str,
                     inferred_src: str | None = None, late: str | None = None) -> None:
        """End the connect's current rtc.attempt (if any) and forget it."""
        a, self._attempt = self._attempt, None
        if a is not None:
            a.end(t, etype, err, outcome=outcome, inferred_src=inferred_src, attempts_max=self._attempts_max,
                  late=late)

    # ------------------------------------------------------------------ record handlers: connect path
    def _r_connect_retry(self, d: dict[str, Any], t: int) -> None:
        if self.state != CONNECTING or self._attempt is None:
            return
        self._attempts_max = d["n"] + 1
        err = d.get("error", "")
        self._end_connect(t, classify_error(err), err, outcome="failed")
        self._attempt = self._start_attempt(d["i"] + 1, t, "connect")

    def _r_connect_error(self, d: dict[str, Any], t: int) -> None:
        if self.state != CONNECTING or self._attempt is None:
            return
        err = d.get("error", "")
        self._end_connect(t, classify_error(err), err, outcome="failed")

    def _r_auth_rejected_connect(self, d: dict[str, Any], t: int) -> None:
        if self.state != CONNECTING or self._attempt is None:
            return
        self._end_connect(t, "auth", "authentication rejected during connect" + d.get("error", ""), outcome="failed")

    def _r_ready_timeout(self, d: dict[str, Any], t: int) -> None:
        self._out.event(self._active(), c.EV_READY_TIMEOUT, t)

    def _r_ffi_init(self, d: dict[str, Any], t: int) -> None:
        pass  # fingerprinting only

    # ------------------------------------------------------------------ record handlers: reconnect episodes
    def _start_episode(self, t: int, attrs: dict[str, Any], inferred_src: str | None = None) -> None:
        ep = _Episode(self._key("reconnect"), t, dict(attrs))
        a = dict(attrs)
        if inferred_src:
            a.update(inferred(inferred_src))
        if not self._out.start("rtc.reconnect", ep.key, t, a):
            return
        self._late = None
        self._episode = ep
        pre, self._pre = self._pre, []
        for pt, name, pattrs in pre:
            self._out.event(ep.key, name, pt, pattrs)

    def _recovered_event(self, ep: _Episode, t: int) -> None:
        """The `reconnected` event: the episode recovered at t. Its log batch may still be on its way (attempt
        records, the session close with the cause): the episode stays open for it, everything placed from now on
        is kept within its time, and it ends at t with its 'RtcEngine successfully recovered' record, with the next
        reconnect / disconnect / connect, or with the first input after ``LATE_EPISODE_WINDOW``."""
        ep.recovered_t = t
        ep.clamped = Clamped(self._out, ep.t, t)
        if ep.attempt is not None:
            ep.attempt.out = ep.clamped
        # a quiet room may send nothing more: the window's end alone ends the episode then
        timer = threading.Timer(LATE_EPISODE_WINDOW / 1e9 + 0.2, self._settle_quiet, args=(ep,))
        timer.daemon = True
        timer.start()

    @guarded("rust.machine.settle_quiet")
    def _settle_quiet(self, ep: _Episode) -> None:
        """The recovered episode's window passed with no input at all: it ends now (as the first later input would
        have ended it), not with a stall record of an episode that recovered."""
        with self._lock:
            if self._episode is ep and ep.recovered_t is not None:
                self._settle(ep.recovered_t + LATE_EPISODE_WINDOW + 1)

    def _settle(self, t: int, *, force: bool = False) -> None:
        """End an episode the `reconnected` event recovered, when its records are no longer awaited."""
        ep = self._episode
        if ep is not None and ep.recovered_t is not None and (force or t - ep.recovered_t > LATE_EPISODE_WINDOW):
            self._finish_episode(ep.recovered_t, "recovered")

    def _finish_episode(self, t: int, outcome: str, etype: str | None = None, err: str | None = None) -> None:
        ep = self._episode
        if ep is None:
            return
        if ep.recovered_t is not None:  # it recovered then; what came after is clamped to it
            t = ep.recovered_t
            outcome, etype, err = "recovered", None, None
        self._episode = None
        if ep.attempt is not None:
            if outcome == "recovered":
                ep.attempt.end(t, None, None, outcome="ok", inferred_src="recovered", late="pc records after recovery")
                self._late = ep.attempt if ep.attempt.late else None
            else:
                ep.attempt.end(t, etype or "reconnect_failed", err or outcome, outcome="failed")
        if ep.backoff is not None:
            (ep.clamped or self._out).end(ep.backoff, t)
        attrs = dict(ep.attrs)
        attrs[c.OUTCOME] = outcome
        if ep.disconnect_reason:
            attrs[c.DISCONNECT_REASON] = ep.disconnect_reason
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
        attrs = {c.RECONNECT_SOURCE: d.get("source"), c.RECONNECT_REASON: d.get("reason"),
                 c.RECONNECT_ACTION: d.get("action")}
        if self._ping_timeout and "ping timeout" in f"{d.get('source')} {d.get('reason')}".lower():
            # the SDK gives the signal path up one ping timeout after its last pong: that is when it went silent
            attrs[c.RECONNECT_SILENT_SINCE] = t - self._ping_timeout * 1_000_000_000
        ep = self._episode
        if ep is None:
            if self.state != CONNECTED:
                return
            self._start_episode(t, attrs)
        elif not ep.attrs:  # the episode started from the `reconnecting` event, which outran this record
            ep.attrs.update(attrs)
            self._out.set_attributes(ep.key, attrs)
        else:
            self._out.event(self._active(), c.EV_SESSION_CLOSE, t, attrs)

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
            ep.attempt.end(t, "error", "next attempt started", outcome="failed")
            ep.attempt = None
        if ep.backoff is not None:
            (ep.clamped or self._out).end(ep.backoff, t)
            ep.backoff = None
        # a first attempt whose record came after the `reconnected` event began with the episode (the engine tries
        # at once); its record's time says nothing
        ep.attempt = self._start_attempt(n, ep.t if ep.clamped is not None and ep.attempts == 0 else t, mode)
        ep.attempts += 1

    def _r_resume_attempt(self, d: dict[str, Any], t: int) -> None:
        self._attempt_start(d, t, "resume")

    def _r_restart_attempt(self, d: dict[str, Any], t: int) -> None:
        self._attempt_start(d, t, "restart")

    def _attempt_failed(self, d: dict[str, Any], t: int, *, backoff: bool = True, etype: str | None = None) -> None:
        ep = self._episode
        if ep is None or ep.attempt is None:
            return
        err = d.get("error", "")
        ep.attempt.end(t, etype or classify_error(err), err, outcome="failed")
        ep.attempt = None
        if backoff:
            k = self._key("backoff")
            ep.backoff = k if (ep.clamped or self._out).start("rtc.reconnect.backoff", k, t, parent=ep.key) else None

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
            (ep.clamped or self._out).end(ep.backoff, t, attrs={c.RETRY_NOW: True})
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
            self._start_episode(t, {c.RECONNECT_REASON: reason, c.RECONNECT_ACTION: "Disconnect"},
                                inferred_src="disconnected event")
        if self._episode is not None:
            if reason:
                self._episode.disconnect_reason = reason
            cancelled = reason == "CLIENT_INITIATED"
            self._finish_episode(t, "disconnected", None if cancelled else "disconnected",
                                 None if cancelled else f"disconnected: {reason or 'unknown'}")
        if self.state not in (DISCONNECTED, IDLE):
            self._flush_pre()
            self._out.event(None, c.EV_DISCONNECTED, t, {c.DISCONNECT_REASON: reason or "UNKNOWN_REASON"})
        self.state = DISCONNECTED

    def _r_room_disconnected(self, d: dict[str, Any], t: int) -> None:
        reason = _camel_to_upper(d.get("reason"))
        if self._episode is not None:
            self._disconnected(t, reason)

    def _r_pc_failed(self, d: dict[str, Any], t: int) -> None:
        a = self._container()
        if a is not None:
            a.pc_failed(d["pc"], t)
        self._event_or_pre(c.EV_PC_FAILED, t, {c.PC: d["pc"]})

    def _r_leave_request(self, d: dict[str, Any], t: int) -> None:
        attrs = {c.LEAVE_REASON: d.get("reason"), c.LEAVE_ACTION: d.get("action")}
        if "can_reconnect" in d:
            attrs[c.LEAVE_CAN_RECONNECT] = d["can_reconnect"] == "true"
        if d.get("action") == "Disconnect":
            # no session close is logged for a Disconnect: the leave itself starts the episode, which the
            # `disconnected` event ends
            if self._episode is None and self.state == CONNECTED:
                self._start_episode(t, {c.RECONNECT_SOURCE: "server request to leave",
                                        c.RECONNECT_REASON: d.get("reason"),
                                        c.RECONNECT_ACTION: "Disconnect"})
            if self._episode is not None:
                self._episode.disconnect_reason = d.get("reason")
        self._event_or_pre(c.EV_LEAVE, t, attrs)

    def _r_dc_closed(self, d: dict[str, Any], t: int) -> None:
        self._event_or_pre(c.EV_DC_CLOSED, t, {c.DC_LABEL: d.get("label")})

    def _watchdog(self, task: str, d: dict[str, Any], t: int) -> None:
        if self.state == IDLE:
            return
        self._out.event(self._active(), c.EV_WATCHDOG, t, {c.WATCHDOG_TASK: task,
                                                             c.WATCHDOG_MESSAGE_KIND: d.get("message_kind")})

    def _r_wrong_packet_seq(self, d: dict[str, Any], t: int) -> None:
        attrs = {c.RETRY_FIRST_SEQ: d.get("first")}
        if "missing" in d:
            attrs[c.RETRY_MISSING] = d["missing"]
        self._out.event(self._active(), c.EV_DATA_RETRY_GAP, t, attrs)

    def _r_synth_disconnect(self, d: dict[str, Any], t: int) -> None:
        if self.state != IDLE:
            self._out.event(self._active(), c.EV_PARTICIPANT_DISCONNECTED, t, {c.SYNTHESIZED: True})


def _reason_name(reason: Any) -> str | None:
    if reason is None:
        return None
    if isinstance(reason, int):
        return c.DISCONNECT_REASONS.get(reason, str(reason))
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
