"""The findings: one table that turns a job's phases into the sentence a user needs ("why was it slow, why did it fail").

Each :class:`Rule` has a code, the evidence that triggers it (a function over the spans of one trace), a one-sentence
summary, what to check and where to read more. :func:`diagnose` runs every rule over one job's spans and returns
the :class:`Finding` objects, most specific first (the table's order); a rule that names the cause more precisely
*subsumes* the generic one it explains (egress contention explains the signal connect timeout of the same attempt).
A healthy job gets no finding. The README's findings table is generated from :data:`RULES`.

Usage::

    from lk_probe.findings import diagnose
    for f in diagnose(spans):            # a SpanSet (or iterable of SpanRecords) of one trace
        print(f.code, f.summary, f.evidence)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import _catalogue as c
from .spans import SpanRecord, SpanSet

__all__ = ["Finding", "Rule", "RULES", "diagnose", "markdown_table"]

WHY = "README.md#why-did-it-fail"
CONNECT_PHASES = ("job.connect", "room_connect", "rtc.connect")


@dataclass(frozen=True)
class Finding:
    """One diagnosis of one job."""

    code: str
    title: str
    summary: str
    evidence: str
    check: str
    more: str
    span_id: str | None = None  # the span the finding concerns
    phase: str | None = None  # … and its phase
    durations: dict[str, float] = field(default_factory=dict)  # the phase durations that matter, in s

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "title": self.title, "summary": self.summary, "evidence": self.evidence,
                "check": self.check, "more": self.more, "span_id": self.span_id, "phase": self.phase,
                "durations": dict(self.durations)}


class Match(NamedTuple):
    span: SpanRecord | None
    evidence: str
    durations: dict[str, float]
    fields: dict[str, Any] = {}  # values for the rule's summary template


class View:
    """One trace's spans, with the look-ups the rules share."""

    def __init__(self, spans: SpanSet, livekit_version: str | None) -> None:
        self.spans = spans
        self.t0 = spans[0].start_ns if spans else 0
        self.version = livekit_version or next(
            (str(s.attributes[c.RTC_VERSION]) for s in spans if c.RTC_VERSION in s.attributes), None)

    def of(self, *phases: str) -> list[SpanRecord]:
        return [s for s in self.spans if s.phase in phases]

    def kids(self, span: SpanRecord, phase: str) -> list[SpanRecord]:
        return [s for s in self.spans.children(span) if s.phase == phase]

    def at(self, t_ns: int) -> str:
        """A time as an offset from the trace's start."""
        return f"+{(t_ns - self.t0) / 1e9:.1f} s"

    def events(self, name: str) -> list[tuple[SpanRecord, Any]]:
        return [(s, e) for s in self.spans for e in s.events if e.name == name]


def _s(x: float | None) -> str:
    return "?" if x is None else f"{x:.1f} s"


def _etype(span: SpanRecord) -> str | None:
    return span.attributes.get(c.ERROR_TYPE)


def _budget(span: SpanRecord) -> float | None:
    """The span's phase budget; livekit-agents' own ``room_connect`` (1.8.2+) does what ``job.connect`` does and is
    held to its budget."""
    phase = "job.connect" if span.phase == "room_connect" else span.phase
    return c.budget(phase) if phase in c.BY_NAME else None


def _over_budget(span: SpanRecord) -> bool:
    budget = _budget(span)
    return budget is not None and span.duration is not None and span.duration > budget


def _attempt_no(span: SpanRecord) -> str:
    n = span.attributes.get(c.ATTEMPT)
    return f"attempt {n}" if n is not None else "an attempt"


def _parent_attempt(v: View, span: SpanRecord) -> SpanRecord | None:
    p = v.spans.parent(span)
    return p if p is not None and p.phase == "rtc.attempt" else None


# ------------------------------------------------------------------------------------------------ the connect


def _egress_contention(v: View) -> Match | None:
    for att in v.of("rtc.attempt"):
        sig = [s for s in v.kids(att, "rtc.signal") if _etype(s) == "timeout"]
        reg = [r for r in v.kids(att, "rtc.region_fetch") if _etype(r) == "region_fetch_timeout"]
        if sig and reg and reg[0].start_ns >= sig[0].start_ns:
            s, r = sig[0], reg[0]
            host = s.attributes.get(c.SERVER_ADDRESS, "the server")
            return Match(att, f"{_attempt_no(att)} at {v.at(att.start_ns)}: the signal connect to {host} timed out "
                              f"after {_s(s.duration)}, then the region fetch to the same host timed out after "
                              f"{_s(r.duration)} ({_s(att.duration)} in the attempt)",
                         {"rtc.signal": s.duration or 0.0, "rtc.region_fetch": r.duration or 0.0,
                          "rtc.attempt": att.duration or 0.0})
    return None


def _signal_timeout(v: View) -> Match | None:
    sigs = [s for s in v.of("rtc.signal") if _etype(s) == "timeout"]
    if not sigs:
        return None
    s = sigs[0]
    att = _parent_attempt(v, s)
    host = s.attributes.get(c.SERVER_ADDRESS, "the server")
    path = s.attributes.get(c.SIGNAL_PATH)
    more = f" ({len(sigs)} signal connects timed out in all)" if len(sigs) > 1 else ""
    return Match(att or s, f"{_attempt_no(att) if att else 'the connect'} at {v.at(s.start_ns)}: the signal connect "
                           f"to {host}{f' on the {path} path' if path else ''} timed out after {_s(s.duration)}"
                           f"{more}", {"rtc.signal": s.duration or 0.0})


def _auth_artefact(v: View) -> Match | None:
    for att in v.of("rtc.attempt", "rtc.reconnect.attempt"):
        if att.attributes.get(c.ERROR_REPORTED_TYPE) == "auth" and _etype(att) != "auth":
            return Match(att, f"{_attempt_no(att)}: failed with {_etype(att)} first; livekit"
                              f"{' ' + v.version if v.version else ''} then reported its token-less validate "
                              f"request's 401 in its place", {"rtc.attempt": att.duration or 0.0},
                         {"version": v.version or "1.1.2"})
    return None


def _auth(v: View) -> Match | None:
    for s in v.spans:
        if _etype(s) == "auth" and s.phase in ("rtc.signal", "rtc.validate", "rtc.attempt", "rtc.reconnect.attempt",
                                               *CONNECT_PHASES):
            return Match(s, f"{s.phase} at {v.at(s.start_ns)} failed with error.type=auth"
                            f"{': ' + s.status_message[:120] if s.status_message else ''}",
                         {s.phase: s.duration or 0.0})
    return None


def _v1_fallback(v: View) -> Match | None:
    for s in v.of("rtc.signal"):
        if s.attributes.get(c.SIGNAL_PATH) == "v1" and _etype(s) == "http_404":
            return Match(s, f"the v1 signal path answered 404 after {s.duration * 1000:.0f} ms; the SDK retried on "
                            f"v0" if s.duration is not None else "the v1 signal path answered 404",
                         {"rtc.signal": s.duration or 0.0})
    return None


def _slow_join(v: View) -> Match | None:
    for j in v.of("rtc.join"):
        if _etype(j) == "join_timeout" or _over_budget(j):
            server = ", ".join(f"{k.rsplit('.', 1)[-1]}={j.attributes[k]}" for k in
                               (c.SERVER_REGION, c.SERVER_NODE_ID, c.SERVER_VERSION) if k in j.attributes)
            what = "never came" if _etype(j) == "join_timeout" else "came"
            return Match(j, f"the signal socket was open at {v.at(j.start_ns)}; the JoinResponse {what} after "
                            f"{_s(j.duration)} (budget {_s(c.budget('rtc.join'))}){f'; server {server}' if server else ''}",
                         {"rtc.join": j.duration or 0.0})
    return None


def _ice_never(v: View) -> Match | None:
    failed = [s for s in v.of("rtc.attempt", "rtc.pc") if _etype(s) == "pc_timeout"]
    if not failed:
        return None
    atts = [s for s in failed if s.phase == "rtc.attempt"]
    first = atts[0] if atts else failed[0]
    pcs = sorted({str(s.attributes.get(c.PC)) for s in failed if s.phase == "rtc.pc"})
    return Match(first, f"{len(atts) or 1} connect attempt(s) ended with pc_timeout, the first after "
                        f"{_s(first.duration)}{' (' + ', '.join(pcs) + ' PC never connected)' if pcs else ''}",
                 {first.phase: first.duration or 0.0})


def _relayed(v: View) -> Match | None:
    for s in v.of(*CONNECT_PHASES):
        for pc in ("publisher", "subscriber"):
            a = s.attributes
            relayed = a.get(c.ice_attribute(pc, "relayed")) is True
            tcp = a.get(c.ice_attribute(pc, "protocol")) == "tcp"
            if relayed or tcp:
                kinds = f"{a.get(c.ice_attribute(pc, 'local_candidate_type'))}→" \
                        f"{a.get(c.ice_attribute(pc, 'remote_candidate_type'))}"
                how = " and ".join(x for x, y in (("relayed (TURN)", relayed), ("over TCP", tcp)) if y)
                return Match(s, f"the {pc} PC's selected ICE pair is {how}: {kinds}/"
                                f"{a.get(c.ice_attribute(pc, 'protocol'))}", {})
    return None


def _slow_connect(v: View) -> Match | None:
    for s in v.of(*CONNECT_PHASES):
        if s.error or _over_budget(s):
            what = f"failed ({_etype(s) or s.status_message[:80]}) after" if s.error else "took"
            return Match(s, f"{s.phase} {what} {_s(s.duration)} (budget {_s(_budget(s))}); "
                            f"{len(v.of('rtc.attempt'))} engine attempt(s)", {s.phase: s.duration or 0.0})
    return None


# ------------------------------------------------------------------------------------------------ the worker


def _worker_full(v: View) -> Match | None:
    for job in v.of("job"):
        a = job.attributes
        load, threshold = a.get(c.WORKER_LOAD), a.get(c.WORKER_LOAD_THRESHOLD)
        over = load is not None and threshold is not None and load >= threshold
        if over or a.get(c.WORKER_STATUS) == "WS_FULL" or a.get(c.OUTCOME) == "rejected_unavailable":
            return Match(job, f"worker load {load if load is not None else '?'} vs threshold "
                              f"{threshold if threshold is not None else 'none'}, status "
                              f"{a.get(c.WORKER_STATUS, '?')}, outcome {a.get(c.OUTCOME, '?')}, "
                              f"{a.get(c.WORKER_ACTIVE_JOBS, '?')} active jobs", {})
    return None


def _assignment_timeout(v: View) -> Match | None:
    for s in v.of("job.assignment"):
        if _etype(s) == "assignment_timeout":
            return Match(s, f"the worker accepted at {v.at(s.start_ns)}; no JobAssignment after {_s(s.duration)}",
                         {"job.assignment": s.duration or 0.0})
    return None


def _slow_handler(v: View) -> Match | None:
    for s in v.of("job.request_handler"):
        if _over_budget(s):
            return Match(s, f"the request handler ran {_s(s.duration)} (budget "
                            f"{_s(c.budget('job.request_handler'))}) before it answered "
                            f"({s.attributes.get(c.OUTCOME, '?')})", {"job.request_handler": s.duration or 0.0})
    return None


def _cold_start(v: View) -> Match | None:
    for s in v.of("job.launch"):
        if s.attributes.get(c.WARM) is False:
            pre = v.of("process.prewarm")
            extra = f"; the process's start and prewarm took {_s(pre[0].duration)}" if pre else ""
            return Match(s, f"no idle job process was ready ({s.attributes.get(c.WORKER_IDLE_PROCESSES, 0)} idle): "
                            f"the launch took {_s(s.duration)}{extra}", {"job.launch": s.duration or 0.0})
    return None


def _slow_prewarm(v: View) -> Match | None:
    for s in v.of("process.prewarm"):
        if _over_budget(s):
            return Match(s, f"the job process's start and prewarm took {_s(s.duration)} (budget "
                            f"{_s(c.budget('process.prewarm'))})", {"process.prewarm": s.duration or 0.0})
    return None


_KILL_WHY = {"unresponsive": "the worker killed it: it stopped answering the worker's pings (a blocked event loop)",
             "memory_limit": "the worker killed it: it went over its memory limit (job_memory_limit_mb)",
             "initialization_timeout": "the worker killed it: it did not finish initializing in time "
                                       "(initialize_process_timeout)",
             "shutdown_timeout": "the worker killed it: it did not shut down in time (shutdown_process_timeout)"}


def _killed(v: View) -> Match | None:
    for s in v.of("job.process"):
        a = s.attributes
        if a.get(c.OUTCOME) not in ("killed", "failed"):
            continue
        cause = a.get(c.KILL_CAUSE)
        sig = a.get(c.SIGNAL)
        if cause in _KILL_WHY:
            why = _KILL_WHY[cause]
        elif sig is not None and not a.get(c.KILLED_BY_WORKER):
            why = "a signal from outside the worker killed it (the kernel's OOM killer, the container runtime, an " \
                  "operator)"
        elif sig is not None:
            why = f"the worker killed it ({cause or 'cause unknown'})"
        else:
            why = "it exited with an error"
        open_ = a.get(c.INCOMPLETE_PHASES)
        return Match(s, f"job process {a.get(c.PROCESS_PID, '?')} ended at {v.at(s.end_ns or s.start_ns)} with exit "
                        f"code {a.get(c.PROCESS_EXIT_CODE)}{f' ({_etype(s)})' if _etype(s) else ''}"
                        f"{f', kill cause {cause}' if cause else ''}"
                        f"{f'; {open_} phase(s) were still open' if open_ else ''}",
                     {"job.process": s.duration or 0.0}, {"why": why})
    return None


# ------------------------------------------------------------------------------------------------ after the connect


def _watchdog_text(v: View) -> tuple[SpanRecord, Any] | None:
    found = v.events(c.EV_WATCHDOG)
    return found[0] if found else None


def _loop_blocked(v: View) -> Match | None:
    for s in v.spans:
        if s.name == "event_loop_blocked" and c.RUST_WATCHDOG_TASK in s.attributes:
            a = s.attributes
            return Match(s, f"the job's event loop was blocked for {_s(s.duration)} at {v.at(s.start_ns)} while the "
                            f"Rust handler {a[c.RUST_WATCHDOG_TASK]}"
                            f"({a.get(c.RUST_WATCHDOG_MESSAGE_KIND, '?')}) logged its 10 s watchdog line",
                         {"event_loop_blocked": s.duration or 0.0})
    for s, e in v.events(c.EV_WATCHDOG):
        if c.LOOP_BLOCKED_DURATION in e.attributes:
            return Match(s, f"the Rust handler {e.attributes.get(c.WATCHDOG_TASK, '?')}"
                            f"({e.attributes.get(c.WATCHDOG_MESSAGE_KIND, '?')}) logged its 10 s watchdog line at "
                            f"{v.at(e.t_ns)} while the event loop was blocked for "
                            f"{_s(e.attributes[c.LOOP_BLOCKED_DURATION])}", {})
    return None


def _episodes(v: View, failed: bool | None = None) -> list[SpanRecord]:
    """Reconnect episodes (``failed``: only those that ended in error, or only those that did not). An episode the
    server ended on purpose (a Leave with action disconnect: the engine does not try) is no failure."""
    eps = [e for e in v.of("rtc.reconnect")
           if str(e.attributes.get(c.RECONNECT_ACTION, "")).lower() != "disconnect"]
    return [e for e in eps if failed is None or e.error == failed]


def _is_migration(ep: SpanRecord, v: View) -> bool:
    reason = str(ep.attributes.get(c.RECONNECT_REASON, "")).lower()
    leaves = [e for e in ep.events if e.name == c.EV_LEAVE and "migration" in
              str(e.attributes.get(c.LEAVE_REASON, "")).lower()]
    return "migration" in reason or bool(leaves)


def _episode_story(v: View, ep: SpanRecord) -> str:
    atts = sorted(v.kids(ep, "rtc.reconnect.attempt"), key=lambda s: s.start_ns)
    evs = sorted((e for s in (ep, *atts) for e in s.events), key=lambda e: e.t_ns)
    bits = [f"began at {v.at(ep.start_ns)}"]
    for e in evs:
        if e.name == c.EV_WATCHDOG:
            bits.append(f"{e.attributes.get(c.WATCHDOG_TASK, '?')} on {e.attributes.get(c.WATCHDOG_MESSAGE_KIND, '?')} "
                        f"took over 10 s (watchdog at {v.at(e.t_ns)})")
        elif e.name == c.EV_PC_FAILED:
            bits.append(f"the {e.attributes.get(c.PC, '?')} PC failed at {v.at(e.t_ns)}")
    if atts:
        modes = ", ".join(str(a.attributes.get(c.RECONNECT_MODE, "?")) for a in atts)
        bits.append(f"{len(atts)} attempt(s) ({modes})")
    end = ep.attributes.get(c.OUTCOME) or _etype(ep) or "?"
    bits.append(f"ended {end} ({_etype(ep) or 'ok'}) after {_s(ep.duration)}")
    return "; ".join(dict.fromkeys(bits))


def _migration_never_recovers(v: View) -> Match | None:
    for ep in _episodes(v, failed=True):
        if _is_migration(ep, v):
            late_answer = any(e.name == c.EV_WATCHDOG and e.attributes.get(c.WATCHDOG_MESSAGE_KIND) == "Answer"
                              for s in (ep, *v.kids(ep, "rtc.reconnect.attempt")) for e in s.events)
            detail = ("the SDK applied the migration Answer too late (its 10 s 'signal_event taking too much time' "
                      "watchdog) and its peer connections failed" if late_answer else
                      "the resume after the migration never re-established the session")
            return Match(ep, _episode_story(v, ep), {"rtc.reconnect": ep.duration or 0.0},
                         {"version": v.version or "(version unknown)", "detail": detail})
    return None


def _resume_refused(v: View) -> Match | None:
    for ep in _episodes(v, failed=False):
        atts = sorted(v.kids(ep, "rtc.reconnect.attempt"), key=lambda s: s.start_ns)
        modes = [a.attributes.get(c.RECONNECT_MODE) for a in atts]
        if "resume" in modes and "restart" in modes and atts[modes.index("resume")].error and \
                modes.index("restart") > modes.index("resume"):
            return Match(ep, _episode_story(v, ep), {"rtc.reconnect": ep.duration or 0.0})
    return None


def _ping_timeout(v: View) -> Match | None:
    for ep in _episodes(v):
        why = f"{ep.attributes.get(c.RECONNECT_SOURCE, '')} {ep.attributes.get(c.RECONNECT_REASON, '')}".lower()
        if "ping timeout" in why:
            since = ep.attributes.get(c.RECONNECT_SILENT_SINCE)
            if since is not None:
                silent = f"the signal path went silent at {v.at(since)} (its last pong) and the SDK noticed one " \
                         f"ping timeout ({_s((ep.start_ns - since) / 1e9)}) later, at {v.at(ep.start_ns)}"
            else:
                silent = f"the SDK noticed at {v.at(ep.start_ns)}; the signal path had gone silent one ping timeout " \
                         f"(the server sets it in the JoinResponse) before that"
            return Match(ep, f"{silent}; the episode ended {ep.attributes.get(c.OUTCOME, '?')} after "
                             f"{_s(ep.duration)}", {"rtc.reconnect": ep.duration or 0.0})
    return None


def _reconnect_failed(v: View) -> Match | None:
    eps = _episodes(v, failed=True)
    return Match(eps[0], _episode_story(v, eps[0]), {"rtc.reconnect": eps[0].duration or 0.0}) if eps else None


# ------------------------------------------------------------------------------------------------ media


def _session_start_failed(v: View) -> Match | None:
    for s in v.of("session.start"):
        if s.error:
            why = _etype(s) or "an exception"
            return Match(s, f"session.start ended {why} after {_s(s.duration)} at {v.at(s.end_ns or s.start_ns)}: "
                            f"{s.status_message or why}", {"session.start": s.duration or 0.0}, {"why": why})
    return None


# a participant that publishes no audio may be a data-only client: no finding on media.track_wait alone
_MEDIA_STAGES = (("media.subscribe", "the caller's audio track was published but the agent's subscription never "
                                     "completed"),
                 ("media.first_audio", "the agent subscribed to the caller's audio track but no RTP ever arrived"))


def _caller_not_heard(v: View) -> Match | None:
    for phase, detail in _MEDIA_STAGES:
        for s in v.of(phase):
            if s.error:
                return Match(s, f"{phase} ended {_etype(s)} after {_s(s.duration)} (still open when it ended)",
                             {phase: s.duration or 0.0}, {"detail": detail})
    return None


# ------------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Rule:
    code: str
    title: str
    trigger: str  # the evidence rule, in words (the README's table)
    summary: str  # one sentence; may name fields of the match: {version}, {why}, {detail}
    check: str
    more: str
    match: Callable[[View], Match | None]
    subsumes: tuple[str, ...] = ()


RULES: tuple[Rule, ...] = (
    Rule("egress_contention", "Egress / connection-establishment contention",
         "in one `rtc.attempt`: `rtc.signal` ends `error.type=timeout` (5 s) and then `rtc.region_fetch` ends "
         "`region_fetch_timeout` (3 s)",
         "Two separate connections to the same LiveKit host stalled back to back (the signal WebSocket, then the "
         "region fetch): new outbound connections from this machine are being held up — egress / "
         "connection-establishment contention on your side, not the LiveKit server.",
         "NAT gateway port allocation (AWS: ErrorPortAllocation, ActiveConnectionCount), conntrack usage "
         "(nf_conntrack_count vs nf_conntrack_max), DNS latency (CoreDNS), and whether the pod's CPU was pegged; "
         "livekit 1.1.21+ no longer fails the attempt on a region-fetch timeout.",
         WHY, _egress_contention, subsumes=("signal_connect_timeout", "slow_connect")),
    Rule("signal_connect_timeout", "Signal connect timeout",
         "an `rtc.signal` ends `error.type=timeout` (the SDK's 5 s connect timeout)",
         "The signal WebSocket to the LiveKit server did not open within the SDK's 5 s connect timeout, so the "
         "attempt failed and the SDK retried.",
         "the network path to the server host: DNS, egress/NAT, proxies or TLS interception, the host's CPU; the "
         "server's health for that host.", WHY, _signal_timeout, subsumes=("slow_connect",)),
    Rule("auth_failed", "Token refused",
         "a signal, validate, attempt or connect span ends `error.type=auth` (401/403)",
         "The LiveKit server refused the token (401/403): an expired or not-yet-valid token, a wrong API key or "
         "secret, or a token for another project or room.",
         "the token's exp/nbf against the clock (clock skew), LIVEKIT_API_KEY / LIVEKIT_API_SECRET belonging to the "
         "project of LIVEKIT_URL, the grants (roomJoin, room name).", WHY, _auth, subsumes=("slow_connect",)),
    Rule("ice_never_connects", "ICE never connects",
         "an `rtc.attempt` or `rtc.pc` ends `error.type=pc_timeout`",
         "The peer connection never connected (ICE/DTLS within the SDK's 15 s): UDP to the media server is blocked "
         "or filtered and no TURN/TCP fallback got through.",
         "egress firewall / security-group rules for UDP to the media ports (self-hosted: rtc.port_range_start–end, "
         "7881/TCP, 3478/UDP), TURN configuration, and that the server advertises an address this machine can reach "
         "(use_external_ip / node_ip).", WHY, _ice_never, subsumes=("slow_connect",)),
    Rule("slow_join_response", "Slow JoinResponse (server side)",
         "an `rtc.join` over its budget (2 s) or ending `join_timeout`",
         "The server took long to send the JoinResponse after the signal socket opened: the delay is on the server "
         "side (room placement, the node's load), not the network.",
         "the LiveKit server's load and logs for that room and node (lk_probe.server.node_id / region on the join); "
         "LiveKit Cloud status; self-hosted: Redis and the node's CPU.", WHY, _slow_join,
         subsumes=("slow_connect",)),
    Rule("migration_never_recovers", "Reconnect after a migration never recovers",
         "an `rtc.reconnect` with reason Migration (or a Leave with that reason) that ends in error (gave up, "
         "failed, the process died)",
         "A reconnect after a server migration never recovered on livekit {version}: {detail}; the room stayed "
         "silent.",
         "upgrade livekit (rtc) to the newest release (reconnect hardening landed after 1.1.2); look for a blocked "
         "event loop at the time (rtc.watchdog events, event_loop_blocked).", WHY, _migration_never_recovers,
         subsumes=("reconnect_failed",)),
    Rule("resume_refused", "Resume refused, full reconnect",
         "an `rtc.reconnect` whose failed `resume` attempt is followed by a `restart` attempt",
         "The server refused the resume (it no longer had the participant's session) and the SDK fell back to a "
         "full reconnect: the participant rejoined with a new session and republished its tracks.",
         "server-side node restarts or migrations at the time, how long the client was away, and that your agent "
         "handles a rejoin (track re-subscription, participant state).", WHY, _resume_refused),
    Rule("ping_timeout", "Signal ping timeout",
         "an `rtc.reconnect` whose source or reason is `ping timeout` (`lk_probe.reconnect.silent_since`: when "
         "the signal path went silent)",
         "The signal connection went silent (no pong within the server-set ping timeout) and the SDK only noticed "
         "one ping timeout later: the network path dropped without closing the socket.",
         "network drops, NAT/connection-tracking idle timeouts, proxies or load balancers that silently drop "
         "long-lived WebSockets; the time it went silent, not the episode's start, is when to look.", WHY,
         _ping_timeout),
    Rule("reconnect_failed", "Reconnect failed",
         "an `rtc.reconnect` that ends in error",
         "The engine lost its session and could not get it back: the reconnect episode ended without recovering.",
         "the episode's attempts and their error.type; the network at the time; the server's Leave reason.",
         WHY, _reconnect_failed),
    Rule("loop_blocked_rust_watchdog", "Blocked event loop with a Rust watchdog line",
         "livekit-agents' `event_loop_blocked` span names a Rust watchdog line (`lk_probe.rust_watchdog.*`), or an "
         "`rtc.watchdog` event names a block",
         "The job's Python event loop was blocked while a Rust SDK handler waited on it for over 10 s: the "
         "blocking Python code, not the network, held up the room's signalling.",
         "CPU-bound or blocking calls in the entrypoint and callbacks (run them in a thread or executor), the "
         "process's CPU share.", WHY, _loop_blocked),
    Rule("session_start_failed", "The session never started",
         "`session.start` (livekit-agents' `AgentSession.start`) ended in error",
         "The agent joined the room but its session never started: AgentSession.start raised {why}, so the agent "
         "never started listening.",
         "the exception on session.start (type and message); the plugins (STT, LLM, TTS, VAD) start with the session: "
         "their credentials, models and network access.", WHY, _session_start_failed),
    Rule("caller_not_heard", "The caller's audio never reached the agent",
         "`media.subscribe` or `media.first_audio` still open (ERROR) when the room or the job ended",
         "The agent was in the room but never heard the caller: {detail}.",
         "the caller's side (microphone permission, a muted or failed publish), the track's subscription (auto "
         "subscribe, permissions) and UDP between the media server and the agent.", WHY, _caller_not_heard),
    Rule("process_killed", "Job process killed",
         "`job.process` ends killed or failed (`process.exit.code`, `lk_probe.kill_cause`, `lk_probe.signal`)",
         "The job process died before the job finished: {why}.",
         "the kill cause: unresponsive → a blocked event loop; memory_limit → job_memory_limit_mb / leaks; "
         "initialization_timeout → a slow prewarm; a signal from outside → the OOM killer (dmesg) or the container "
         "runtime.", WHY, _killed),
    Rule("assignment_timeout", "Assignment timeout",
         "`job.assignment` ends `error.type=assignment_timeout` (livekit-agents waits 7.5 s)",
         "The worker accepted the job but the server's JobAssignment never arrived within livekit-agents' 7.5 s, "
         "so the job was dropped here.",
         "the worker's WebSocket to the server (latency, drops), server-side dispatch logs for the job id; whether "
         "another worker got the job.", WHY, _assignment_timeout),
    Rule("worker_full", "Worker at or over its load threshold",
         "the `job` span's `lk_probe.worker.load` ≥ `lk_probe.worker.load_threshold`, status `WS_FULL`, or outcome "
         "`rejected_unavailable`",
         "The worker was at or over its load threshold when the job arrived: it reports itself full (WS_FULL) and "
         "the server parks new jobs until some worker is available again.",
         "capacity: more workers or earlier autoscaling, load_threshold and load_fnc, the pods' CPU at the time.",
         WHY, _worker_full),
    Rule("cold_process_start", "Cold job process",
         "`job.launch` with `lk_probe.warm=false`",
         "No idle job process was ready, so the job waited for a new process to start and prewarm.",
         "num_idle_processes (default: one per core) against the rate of new jobs; the prewarm function's cost.",
         WHY, _cold_start),
    Rule("slow_request_handler", "Slow request handler",
         "`job.request_handler` over its budget (0.5 s)",
         "The request handler (on_request) took long before it answered, and the server waits for that answer "
         "before assigning the job.",
         "move slow work out of the request handler into the entrypoint; accept first.", WHY, _slow_handler),
    Rule("slow_prewarm", "Slow process start and prewarm",
         "`process.prewarm` over its budget (5 s)",
         "The job process's start and prewarm are slow: whenever no idle process is ready, a job waits that long.",
         "the prewarm/setup function (model loads), num_idle_processes, the host's CPU at process start.", WHY,
         _slow_prewarm),
    Rule("auth_artefact", "401 after a signal timeout is an SDK artefact",
         "an attempt with `lk_probe.error.reported_type=auth` whose `error.type` is another failure (livekit 1.1.2)",
         "The 401 / \"no token\" livekit {version} reports is an artefact: its validate request after a failed "
         "connect carries no token; the real failure is the one before it.",
         "ignore the 401 and look at the attempt's first failure (its error.type); newer livekit sends the token.",
         WHY, _auth_artefact, subsumes=("auth_failed",)),
    Rule("v1_fallback", "v1 → v0 signal fallback (older server)",
         "an `rtc.signal` on the v1 path ends `error.type=http_404`, then the SDK retries on v0",
         "The server has no v1 signalling path (an older LiveKit server): every connect pays a failed v1 request "
         "before the v0 one.",
         "the server's version (lk_probe.server.version on the join); upgrade the server.", WHY, _v1_fallback),
    Rule("relayed_ice_path", "Relayed or TCP media path",
         "the selected ICE pair on the connect span is relayed (TURN) or uses TCP",
         "Media goes through a TURN relay or over TCP: the direct UDP path to the media server failed, so latency "
         "and loss are worse than they need to be.",
         "UDP egress to the media server's ports; a firewall or proxy that forces TURN/TLS on 443.", WHY, _relayed),
    Rule("slow_connect", "Slow or failed connect",
         "a connect span (`job.connect`, `room_connect`, `rtc.connect`) over its budget (3 s) or in error, with no "
         "more specific finding",
         "Joining the room was slow or failed, and none of the specific findings explains it.",
         "the connect's engine phases in the waterfall: which one took the time.", WHY, _slow_connect),
)

BY_CODE: dict[str, Rule] = {r.code: r for r in RULES}


def diagnose(spans: Iterable[Any], *, livekit_version: str | None = None) -> list[Finding]:
    """The findings of one job, most specific first; none for a healthy job.

    ``spans``: the spans of one trace (a :class:`~lk_probe.spans.SpanSet`, SpanRecords or SDK spans).
    ``livekit_version``: the livekit (rtc) version in use, when the spans do not say (``lk_probe.rtc.version``).
    """
    ss = spans if isinstance(spans, SpanSet) else SpanSet(spans)
    v = View(ss, livekit_version)
    found: list[Finding] = []
    dropped: set[str] = set()
    for rule in RULES:
        if rule.code in dropped:
            continue
        try:
            m = rule.match(v)
        except Exception:  # noqa: BLE001 - a rule that cannot read odd spans says nothing
            m = None
        if m is None:
            continue
        dropped.update(rule.subsumes)
        found.append(Finding(rule.code, rule.title, rule.summary.format(**m.fields), m.evidence, rule.check,
                             rule.more, m.span.span_id if m.span else None, m.span.phase if m.span else None,
                             {k: round(d, 3) for k, d in m.durations.items()}))
    return [f for f in found if f.code not in dropped]


def markdown_table() -> str:
    """The README's findings table (a test keeps the README equal to this)."""
    rows = ["| code | finding | evidence that triggers it | what to check |", "|---|---|---|---|"]
    for r in RULES:
        summary = r.summary.replace("{version}", "X").replace("{why}", "why").replace("{detail}", "what went wrong")
        rows.append(f"| `{r.code}` | **{r.title}**: {summary} | {r.trigger} | {r.check} |")
    return "\n".join(rows)
