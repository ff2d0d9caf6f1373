"""Options of :func:`lk_probe.install`, each also settable by an environment variable.

Keyword arguments win over environment variables, which win over the defaults. Unknown keyword arguments raise
``TypeError`` (a programming error); malformed environment values are ignored with one warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from ._errors import warn_once

# name -> (env var, doc)
DOCS: dict[str, tuple[str, str]] = {
    "enabled": ("LK_PROBE_ENABLED", "Set to false to make install() a no-op (OTEL_SDK_DISABLED=true does the same)."),
    "worker": ("LK_PROBE_WORKER", "Instrument the agents worker (job receipt, assignment, launch, process death)."),
    "job_process": ("LK_PROBE_JOB_PROCESS", "Instrument job processes (prewarm, ctx.connect, trace linking)."),
    "rtc": ("LK_PROBE_RTC", "Instrument livekit.rtc.Room and bridge the Rust engine's records into phases."),
    "set_global_provider": ("LK_PROBE_SET_GLOBAL_PROVIDER",
                            "When lk_probe builds the provider from OTEL_* and no global provider is set, make it "
                            "global so livekit-agents' own spans are exported with lk_probe's."),
    "schedule_delay_ms": ("LK_PROBE_SCHEDULE_DELAY_MS",
                          "Batch delay of the provider lk_probe builds (OTEL_BSP_SCHEDULE_DELAY wins when set): "
                          "phases arrive within about a second, in about one export request per second."),
    "flush_timeout_s": ("LK_PROBE_FLUSH_TIMEOUT_S", "Upper bound of every flush lk_probe does (job end, stall)."),
    "stall_records": ("LK_PROBE_STALL_RECORDS",
                      "Export a stall record while a phase is still open once it crosses its budget."),
    "capture_rust_debug": ("LK_PROBE_CAPTURE_RUST_DEBUG",
                           "Read the Rust engine's DEBUG records (needed for join/ICE phases); they are not "
                           "printed to your handlers unless you set LIVEKIT_RTC_DEBUG yourself."),
    "ice_stats": ("LK_PROBE_ICE_STATS",
                  "After a successful connect, read the selected ICE candidate pair of each peer connection "
                  "(get_rtc_stats(), off the critical path) onto the connect span."),
    "media": ("LK_PROBE_MEDIA",
              "After a successful connect, follow the room's media: the first remote participant, the first remote "
              "audio track subscribed and its first RTP, silences of inbound audio, the agent's first published "
              "audio (track stats read a few times a second; nothing per frame), and AgentSession.start."),
    "api": ("LK_PROBE_API", "Trace the dispatching side's livekit.api calls (CreateDispatch, ListDispatch, "
            "DeleteDispatch, CreateRoom) as CLIENT spans; works without livekit-agents."),
    "dispatch_watch": ("LK_PROBE_DISPATCH_WATCH",
                       "Seconds: after each successful dispatch (CreateDispatch, CreateRoom with agents) follow it "
                       "in the background for at most this long and end a dispatch.wait span with its outcome "
                       "(0: off)."),
}


@dataclass(frozen=True)
class Options:
    enabled: bool = True
    worker: bool = True
    job_process: bool = True
    rtc: bool = True
    set_global_provider: bool = True
    schedule_delay_ms: int = 1000
    flush_timeout_s: float = 5.0
    stall_records: bool = True
    capture_rust_debug: bool = True
    ice_stats: bool = True
    media: bool = True
    api: bool = True
    dispatch_watch: float = 0.0


def _parse(value: str, typ: type) -> Any:
    if typ is bool:
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    return typ(value)


def resolve(**kwargs: Any) -> Options:
    names = {f.name: f for f in fields(Options)}
    unknown = set(kwargs) - set(names)
    if unknown:
        raise TypeError(f"lk_probe.install() got unknown option(s) {sorted(unknown)}; known: {sorted(names)}")
    values: dict[str, Any] = {}
    for name, f in names.items():
        if name in kwargs:
            values[name] = kwargs[name]
            continue
        env = DOCS[name][0]
        raw = os.environ.get(env)
        if raw is None or raw == "":
            continue
        typ = {"bool": bool, "int": int, "float": float}.get(str(f.type), str)
        try:
            values[name] = _parse(raw, typ)
        except ValueError as e:
            warn_once(f"env:{env}", "lk_probe: ignoring %s=%r (%s); using the default %r", env, raw, e, f.default)
    return Options(**values)


def otel_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def disabled_by_otel_instrumentations() -> bool:
    raw = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    names = {n.strip() for n in raw.split(",")}
    return bool(names & {"livekit", "lk_probe", "lk-probe"})


def markdown_table() -> str:
    """The README's option table (a test keeps the README equal to this)."""
    rows = ["| option | environment variable | default | meaning |", "|---|---|---|---|"]
    for f in fields(Options):
        env, doc = DOCS[f.name]
        rows.append(f"| `{f.name}` | `{env}` | `{f.default!r}` | {doc} |")
    return "\n".join(rows)
