"""One connect attempt of the engine (``rtc.attempt``, or ``rtc.reconnect.attempt`` in a reconnect episode) and the
phases that run inside it: ``rtc.signal``, the inferred ``rtc.validate`` / ``rtc.region_fetch``, ``rtc.join`` and
``rtc.pc``. The :class:`~lk_probe._rust.machine.EngineMachine` decides when an attempt starts and ends and routes
the records of its phases here (under its lock); see the machine's module docstring for the phase table.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Hashable

from .. import _catalogue as c
from .out import Out, inferred
from .records import classify_error, url_parts

S = 1_000_000_000
REGION_FETCH_TIMEOUT = 3 * S
VALIDATE_TIMEOUT = 3 * S
JOIN_RESPONSE_TIMEOUT = 5 * S
# Records reach Python in batches (livekit's FFI flushes its log about once a second), so a PC's records can arrive
# after the connect callback they preceded: that long after a successful attempt ended, they still belong to it.
LATE_PC_WINDOW = 3 * S

Record = Callable[["Attempt", "dict[str, Any]", int], None]


class Attempt:
    """An attempt's key and the keys of its open children (None when not open). ``mode`` is ``connect`` for an
    ``rtc.attempt``, ``resume`` or ``restart`` for an ``rtc.reconnect.attempt``."""

    RECORDS: ClassVar[dict[str, Record]]  # record kind → handler, filled in below the class

    def __init__(self, out: Out, new_key: Callable[[str], Hashable], n: int, t: int, mode: str, *,
                 cloud: bool = False, host: str | None = None, port: int | None = None) -> None:
        self.out = out
        self.new_key = new_key
        self.key = new_key(mode + "-attempt")
        self.n = n
        self.t = t
        self.mode = mode
        self.cloud = cloud
        self.host = host  # of the URL given to connect: a signal URL without one gets it
        self.port = port
        self.signal: Hashable | None = None
        self.next_signal_region = False
        self.pending_t: int | None = None  # a signal connect failed at this time; validate/region not resolved yet
        self.validate: Hashable | None = None
        self.region: Hashable | None = None
        self.join: Hashable | None = None
        self.join_t = 0
        self.pcs: dict[str, Hashable] = {}
        self.pc_seen = False  # a PC began connecting while the attempt was open
        self.joined_t: int | None = None  # the JoinResponse (or reconnect response) arrived
        self.ready_t: int | None = None
        self.first_error: str | None = None
        # after a successful end before any PC began: what late PC phases are inferred from (None: not awaited),
        # the sink's handle that keeps them under this attempt, its end, and each late 'Connecting' PC's arrival
        self.late: str | None = None
        self.late_ctx: Any = None
        self.end_t = 0
        self.late_pcs: dict[str, int] = {}

    def _child(self, phase: str, what: str, t: int, attrs: dict[str, Any] | None) -> Hashable | None:
        """Start ``phase`` inside this attempt: its key, or None when the sink did not open it."""
        key = self.new_key(what)
        return key if self.out.start(phase, key, t, attrs, parent=self.key) else None

    def _placed(self, phase: str, what: str, start: int, end: int, etype: str | None, err: str | None,
                src: str) -> None:
        """A child phase no record opens, placed from ``start`` to ``end`` (inferred from ``src``)."""
        key = self._child(phase, what, start, inferred(src))
        if key is not None:
            self.out.end(key, end, etype, err if etype else None)

    def innermost(self) -> Hashable:
        """The innermost open phase of this attempt (for events)."""
        for k in (self.signal, self.join, self.validate, self.region):
            if k is not None:
                return k
        for k in self.pcs.values():
            return k
        return self.key

    # ------------------------------------------------------------------ end
    def end(self, t: int, etype: str | None, err: str | None, *, outcome: str, inferred_src: str | None = None,
            attempts_max: int | None = None, late: str | None = None) -> None:
        """End the attempt and everything open inside it. With an error, open children fail with what the error
        says; without one, children still open are closed at t and marked inferred. ``late``: on success before
        any PC began connecting, PC records that arrive afterwards still place ``rtc.pc`` here (see
        :meth:`late_pc_change`), marked inferred from ``late``."""
        self._resolve_pending(t, err)
        out = self.out
        if late is not None and etype is None and not self.pc_seen:
            self.late, self.late_ctx, self.end_t = late, out.context(self.key), t
        ok_attrs = None if etype else inferred(inferred_src or "end of the enclosing attempt")
        if self.signal is not None:
            out.end(self.signal, t, etype, err if etype else None, ok_attrs)
            self.signal = None
        if self.join is not None:
            if etype is not None and self.cloud and etype != "join_timeout" and \
                    t - self.join_t > JOIN_RESPONSE_TIMEOUT:
                # the join timed out, then the region fetch ran until this failure
                jt = self._join_timed_out(t)
                self._placed("rtc.region_fetch", "region", jt, t, etype if etype.startswith("region") else None,
                             err, "JoinResponse timeout (5 s) → attempt end")
            else:
                jtype = "join_timeout" if etype in ("region_fetch_timeout", "region_fetch") else etype
                out.end(self.join, t, jtype, err if jtype else None, ok_attrs)
                self.join = None
        for k in list(self.pcs.values()):
            out.end(k, t, etype, err if etype else None, ok_attrs)
        self.pcs.clear()
        if self.validate is not None:
            out.end(self.validate, t)
            self.validate = None
        if self.region is not None:
            rt = etype if etype and etype.startswith("region") else None
            out.end(self.region, t, rt, err if rt else None)
            self.region = None
        attrs: dict[str, Any] = {c.OUTCOME: outcome}
        if attempts_max is not None:
            attrs[c.ATTEMPTS_MAX] = attempts_max
        if etype is not None and self.first_error is not None and self.first_error != etype and (
                _from_validate(err) or etype in ("region_fetch_timeout", "region_fetch")):
            # livekit 1.1.2 replaces the cause with the validate / region fetch error: the attempt reports the
            # first failure (the signal connect), the error Rust reported stays in the message and this attribute
            attrs[c.ERROR_REPORTED_TYPE] = etype
            etype = self.first_error
        out.end(self.key, t, etype, err if etype else None, attrs)

    def _resolve_pending(self, t: int, region_err: str | None, *, why: str = "attempt end") -> None:
        """A signal connect failed at pending_t; the next record at t tells where validate/region ended."""
        t0 = self.pending_t
        if t0 is None:
            return
        self.pending_t = None
        etype = classify_error(region_err) if region_err else None
        region_failed = etype in ("region_fetch_timeout", "region_fetch") or (
            region_err is not None and "region" in region_err.lower())
        if self.validate is not None:  # non-cloud: validate was started eagerly
            vt = etype if _from_validate(region_err) else None
            self.out.end(self.validate, t, vt, region_err if vt else None)
            self.validate = None
            return
        if not self.cloud:
            return
        src = f"signal connection failed → {why}"
        if region_failed and etype == "region_fetch_timeout":
            split = max(t0, t - REGION_FETCH_TIMEOUT)
            if split > t0:
                self._placed("rtc.validate", "validate", t0, split, None, None,
                             src + " (region fetch = its last 3 s)")
            self._placed("rtc.region_fetch", "region", split, t, "region_fetch_timeout", region_err,
                         src + " (3 s region timeout)")
        elif etype == "validate_timeout":
            split = min(t, t0 + VALIDATE_TIMEOUT)
            self._placed("rtc.validate", "validate", t0, split, "validate_timeout", region_err,
                         src + " (3 s validate timeout)")
            self._placed("rtc.region_fetch", "region", split, t, None, None, src + " (after the validate timeout)")
        else:
            self._placed("rtc.region_fetch", "region", t0, t, etype if region_failed else None,
                         region_err if region_failed else None,
                         src + "; includes the validate request (not separable)")

    # ------------------------------------------------------------------ records: signal, validate, region fetch
    def on_signal_connecting(self, d: dict[str, Any], t: int) -> None:
        out = self.out
        self._resolve_pending(t, None, why="connecting to")
        if self.validate is not None:
            out.end(self.validate, t)
            self.validate = None
        if self.region is not None:
            out.end(self.region, t)
            self.region = None
        if self.signal is not None:
            out.end(self.signal, t, None, None, inferred("next 'connecting to'"))
        if self.join is not None:
            out.end(self.join, t, "closed", "superseded by a new signal connect")
            self.join = None
        parts = url_parts(d.get("url", ""))
        attrs: dict[str, Any] = {}
        host = parts.get("host") or self.host
        if host:
            attrs[c.SERVER_ADDRESS] = host
            attrs[c.SERVER_PORT] = parts.get("port") or self.port
        if parts.get("path"):
            attrs[c.SIGNAL_PATH] = parts["path"]
        if self.next_signal_region:
            attrs[c.SIGNAL_REGION_FALLBACK] = True
            self.next_signal_region = False
        if parts.get("cloud"):
            self.cloud = True
        self.signal = self._child("rtc.signal", "signal", t, attrs)

    def on_signal_ok(self, d: dict[str, Any], t: int) -> None:
        if self.signal is None:
            return
        attrs = {c.SIGNAL_PATH: d["path"]} if d.get("path") else None
        self.out.end(self.signal, t, attrs=attrs)
        self.signal = None
        self.join_t = t
        kind = "reconnect" if self.mode == "resume" else "join"
        self.join = self._child("rtc.join", "join", t, {c.JOIN_RESPONSE: kind})

    def _signal_failed(self, err: str, t: int, path: str | None) -> None:
        etype = classify_error(err)
        if self.signal is not None:
            self.out.end(self.signal, t, etype, err, {c.SIGNAL_PATH: path} if path else None)
            self.signal = None
        self.first_error = self.first_error or etype
        if etype == "http_404" and path == "v1":
            self.first_error = None
            return  # the v0 fallback follows at once, no validate
        if etype == "auth" and "TokenFormat" in err:
            return
        self.pending_t = t
        if not self.cloud:
            self.validate = self._child("rtc.validate", "validate", t, inferred("signal connection failed"))

    def on_signal_failed(self, d: dict[str, Any], t: int) -> None:
        self._signal_failed(d.get("error", ""), t, d.get("path"))

    def on_v0_failed(self, d: dict[str, Any], t: int) -> None:
        self._signal_failed(d.get("error", ""), t, "v0")

    def on_unexpected_signal_error(self, d: dict[str, Any], t: int) -> None:
        if self.pending_t is None:
            return
        t0 = self.pending_t
        self.pending_t = None
        if self.validate is not None:
            self.out.end(self.validate, t)
            self.validate = None
        elif self.cloud:
            self._placed("rtc.validate", "validate", t0, t, None, None,
                         "signal connection failed → unexpected signal error")
        if self.cloud:
            self.region = self._child("rtc.region_fetch", "region", t, inferred("unexpected signal error"))

    def _join_timed_out(self, t: int) -> int:
        """No JoinResponse came: the join ended at its 5 s timeout (or at t if sooner); returns that time."""
        jt = min(t, self.join_t + JOIN_RESPONSE_TIMEOUT)
        self.out.end(self.join, jt, "join_timeout", "failed to receive JoinResponse (inferred)")
        self.join = None
        return jt

    def on_region_connect(self, d: dict[str, Any], t: int) -> None:
        self.cloud = True
        if self.region is not None:
            self.out.end(self.region, t)
            self.region = None
        elif self.join is not None:  # join timed out, region fetched
            jt = self._join_timed_out(t)
            self._placed("rtc.region_fetch", "region", jt, t, None, None,
                         "JoinResponse timeout (5 s) → fallback connection to")
        else:
            self._resolve_pending(t, None, why="fallback connection to")
        self.next_signal_region = True

    def on_region_failed(self, d: dict[str, Any], t: int) -> None:
        err = d.get("error", "region fetch failed")
        etype = classify_error(err)
        if etype not in ("region_fetch_timeout", "region_fetch"):
            etype = "region_fetch"
        self.cloud = True
        if self.region is not None:
            self.out.end(self.region, t, etype, err)
            self.region = None
        elif self.join is not None:
            jt = self._join_timed_out(t)
            start = max(jt, t - REGION_FETCH_TIMEOUT) if etype == "region_fetch_timeout" else jt
            self._placed("rtc.region_fetch", "region", start, t, etype, err,
                         "JoinResponse timeout (5 s) → failed to fetch region urls")
        elif self.pending_t is not None:
            self._resolve_pending(t, err if "region" in err.lower() else "region error: " + err,
                                  why="failed to fetch region urls")
        else:
            self._placed("rtc.region_fetch", "region", t, t, etype, err, "failed to fetch region urls (start unknown)")

    # ------------------------------------------------------------------ records: join, peer connections
    def on_join_response(self, d: dict[str, Any], t: int) -> None:
        attrs = {}
        for src, dst in (("region", c.SERVER_REGION), ("node_id", c.SERVER_NODE_ID),
                         ("version", c.SERVER_VERSION), ("protocol", c.SERVER_PROTOCOL),
                         ("subscriber_primary", c.SUBSCRIBER_PRIMARY), ("ping_interval", c.PING_INTERVAL),
                         ("ping_timeout", c.PING_TIMEOUT)):
            if src in d:
                attrs[dst] = d[src]
        self.joined_t = t
        if self.join is not None:
            self.out.end(self.join, t, attrs=attrs)
            self.join = None
            return
        if self.signal is not None:
            self.out.end(self.signal, t, attrs=inferred("received JoinResponse"))
            self.signal = None
        self.out.event(self.key, c.EV_JOIN_RESPONSE, t, attrs)

    def on_reconnect_response(self, d: dict[str, Any], t: int) -> None:
        self.joined_t = t
        if self.join is not None:
            self.out.end(self.join, t)
            self.join = None
        elif self.signal is not None:
            self.out.end(self.signal, t, attrs=inferred("received reconnect response"))
            self.signal = None

    def on_pc_change(self, d: dict[str, Any], t: int) -> None:
        if self.joined_t is None:
            # the engine creates an attempt's PCs after its JoinResponse (or reconnect response), and records keep
            # their order: a PC record before it is from an earlier room whose log batch came late
            return
        pc, state = d["pc"], d["state"]
        k = self.pcs.get(pc)
        if state == "Connecting":
            self.pc_seen = True
            if k is None:
                k = self._child("rtc.pc", "pc-" + pc, t, {c.PC: pc})
                if k is not None:
                    self.pcs[pc] = k
        elif state == "Connected":
            if k is not None:
                self.out.end(k, t)
                del self.pcs[pc]
            self.ready_t = t
        elif state in ("Failed", "Closed", "Disconnected"):
            if k is not None and state != "Disconnected":
                self.out.end(k, t, "pc_failed" if state == "Failed" else "closed",
                             f"connection change, {state} {pc}")
                del self.pcs[pc]

    def late_pc_change(self, d: dict[str, Any], t: int) -> bool:
        """A 'connection change' record that arrived after this attempt ended well. A PC that went from Connecting
        to Connected gets its ``rtc.pc`` inside the attempt: it ends when the attempt ended (the engine was
        connected by then; the record times say nothing closer) and keeps the time between its two records, never
        starting before the join ended. A PC that failed or closed did so after the attempt: no phase here.
        Returns whether more such records are awaited."""
        if self.late is None or t - self.end_t > LATE_PC_WINDOW:
            return False
        pc, state = d["pc"], d["state"]
        if state == "Connecting":
            self.late_pcs.setdefault(pc, t)
            return True
        t0 = self.late_pcs.pop(pc, None) if state != "Disconnected" else None
        if t0 is None:
            return True
        if state == "Connected":
            floor = self.joined_t if self.joined_t is not None else self.t
            start = min(self.end_t, max(floor, self.end_t - (t - t0)))
            key = self.new_key("pc-" + pc)
            attrs = {c.PC: pc, **inferred(self.late)}
            if self.out.start("rtc.pc", key, start, attrs, parent=self.key, context=self.late_ctx):
                self.out.end(key, self.end_t)
        if self.late_pcs:
            return True
        self.late = self.late_ctx = None
        return False

    def pc_failed(self, pc: str, t: int) -> None:
        """'<Pc> pc state failed': the PC's phase, if open, fails."""
        if pc in self.pcs:
            self.out.end(self.pcs.pop(pc), t, "pc_failed", f"{pc.capitalize()} pc state failed")

    def on_setup_took(self, d: dict[str, Any], t: int) -> None:
        if self.joined_t is None:  # logged once the PCs connected: before the join, it is an earlier room's
            return
        self.ready_t = t
        self.out.event(self.key, c.EV_CONNECTION_SETUP, t, {c.SETUP_MS: d.get("ms")})


Attempt.RECORDS = {
    "signal_connecting": Attempt.on_signal_connecting,
    "signal_ok": Attempt.on_signal_ok,
    "signal_failed": Attempt.on_signal_failed,
    "v0_failed": Attempt.on_v0_failed,
    # "v1_fallback": nothing to do: the failed v1 span already says http_404; the next 'connecting to' is the v0 span
    "unexpected_signal_error": Attempt.on_unexpected_signal_error,
    "region_connect": Attempt.on_region_connect,
    "region_failed": Attempt.on_region_failed,
    "region_stale": Attempt.on_region_failed,
    "join_response": Attempt.on_join_response,
    "reconnect_response": Attempt.on_reconnect_response,
    "pc_change": Attempt.on_pc_change,
    "setup_took": Attempt.on_setup_took,
}


def _from_validate(err: str | None) -> bool:
    """Errors only the validate request produces (SignalError::Client/Server, or its timeout)."""
    if not err:
        return False
    return "Client(" in err or "Server(" in err or "client error:" in err or "server error:" in err \
        or "validate request timed out" in err
