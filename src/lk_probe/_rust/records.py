"""Parse one Rust log record (as forwarded by ``livekit.rtc._ffi_client``) into a typed engine event.

Records reach Python as ``(level, target, line, module_path, message)`` (the FFI's LogRecord fields). Only a
few dozen record shapes matter for the connect path and reconnect episodes. They are listed below in ONE table per
version range, keyed on ``(target, message prefix)``: a record whose target is not in the table costs one dict
lookup; libwebrtc's flood never gets that far (``parse`` returns at the first comparison).

Version ranges (``Era``):

* ``API`` — livekit 1.1.2 (livekit-ffi 0.12.48): signal client in ``livekit_api::signal_client*``, reconnect attempts
  numbered from 0, ``Timeout("signal connection timed out")``, a region fetch error replaces the original error,
  no ``disconnected`` after reconnection gives up.
* ``SIGNALING`` — livekit 1.1.21 (0.12.80) and 1.2.0 (0.13.2): ``livekit_signaling*``, v1 path first, attempts from 1,
  ``Timeout("transport timed out")``, best-effort region fetch. 1.2.0 adds ``connection setup took N ms`` and
  ``livekit_ffi::room_apis::…``.

Targets common to both (``livekit::rtc_engine``, ``livekit::rtc_engine::rtc_session``, ``livekit::room``) are in both
tables; the event kinds are the same whatever the version, the machine handles the behavioural differences.
"""

from __future__ import annotations

import re
from typing import Any, Callable

__all__ = ["EngineEvent", "Era", "parse", "classify_error", "era_of_target", "era_of_rtc_version",
           "era_of_ffi_version", "parse_join_response", "url_parts", "MAX_MESSAGE"]

# Records longer than this are cut before any pattern runs (a JoinResponse with many participants is the longest
# legitimate one; 256 KiB leaves it whole).
MAX_MESSAGE = 256 * 1024

DEBUG, INFO, WARN, ERROR = 10, 20, 30, 40


class Era:
    API = "api"  # livekit 1.1.2 era
    SIGNALING = "signaling"  # livekit 1.1.21 / 1.2.0 era


class EngineEvent:
    """One recognised record. ``kind`` is from the vocabulary below; ``data`` holds the parsed fields (raw, not yet
    redacted: the machine redacts whatever it turns into attributes). ``era`` is what the record's target says about
    the version, if anything."""

    __slots__ = ("kind", "level", "target", "data", "era")

    def __init__(self, kind: str, level: int, target: str, data: dict[str, Any] | None = None,
                 era: str | None = None) -> None:
        self.kind = kind
        self.level = level
        self.target = target
        self.data = data if data is not None else {}
        self.era = era

    def __repr__(self) -> str:
        return f"EngineEvent({self.kind!r}, {self.level}, {self.target!r}, {self.data!r}, era={self.era!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EngineEvent) and (self.kind, self.level, self.target, self.data, self.era) == (
            other.kind, other.level, other.target, other.data, other.era)


# --------------------------------------------------------------------------------------------------------
# field parsers (each gets the message after the matched prefix, returns data or None = not really a match)

_PATH_RE = re.compile(r"path=(v[01])")
_RETRY_RE = re.compile(r"^failed to connect: (?P<err>.*), retrying\.\.\. \((?P<i>\d{1,4})/(?P<n>\d{1,4})\)$", re.S)
_ATTEMPT_RE = re.compile(r"^(\d{1,6})\s*$")
_CLOSE_RE = re.compile(r'^(?P<src>".*") (?P<reason>\w{1,64}) (?P<action>\w{1,32})$', re.S)
_PC_CHANGE_RE = re.compile(r"^(?P<state>\w{1,32}) (?P<target>Publisher|Subscriber)$")
_WRONG_SEQ_RE = re.compile(r"^(?P<first>\d{1,20})(?: > (?P<expected>\d{1,20}), (?P<missing>\d{1,20}) packets missing)?")
_SETUP_RE = re.compile(r"^(?P<ms>\d{1,12}(?:\.\d+)?) ?ms")
_FFI_VERSION_RE = re.compile(r"^v?(\d{1,4}\.\d{1,4}\.\d{1,4})")
_KIND_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]{0,63})")
_LEAVE_FIELD_RE = re.compile(r"\b(can_reconnect|reason|action): ([A-Za-z0-9_]{1,64})")


def _unquote(s: str) -> str:
    """Undo Rust's ``{:?}`` of a String: strip the quotes and the escapes that matter here."""
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        s = s[1:-1]
    return s.replace('\\"', '"').replace("\\\\", "\\")


def _p_none(rest: str) -> dict[str, Any]:
    return {}


def _p_url(rest: str) -> dict[str, Any] | None:
    url = rest.strip()
    if not url:
        return None
    return {"url": url}


def _p_signal_ok(rest: str) -> dict[str, Any]:
    m = _PATH_RE.search(rest)
    return {"path": m.group(1) if m else None, "single_pc": "single_pc_mode=true" in rest}


def _p_signal_failed(rest: str) -> dict[str, Any] | None:
    # rest = "v1 path: Timeout(...)"
    path, sep, err = rest.partition(" path: ")
    if not sep or path not in ("v0", "v1"):
        return None
    return {"path": path, "error": err}


def _p_err(rest: str) -> dict[str, Any]:
    return {"error": rest}


def _p_retry(msg: str) -> dict[str, Any] | None:
    m = _RETRY_RE.match(msg)
    if not m:
        return None
    return {"error": m.group("err"), "i": int(m.group("i")), "n": int(m.group("n"))}


def _p_attempt(rest: str) -> dict[str, Any] | None:
    m = _ATTEMPT_RE.match(rest)
    if not m:
        return None
    return {"i": int(m.group(1))}


def _p_close(rest: str) -> dict[str, Any] | None:
    m = _CLOSE_RE.match(rest)
    if not m:
        return None
    return {"source": _unquote(m.group("src")), "reason": m.group("reason"), "action": m.group("action")}


def _p_pc_change(rest: str) -> dict[str, Any] | None:
    m = _PC_CHANGE_RE.match(rest)
    if not m:
        return None
    return {"state": m.group("state"), "pc": m.group("target").lower()}


def _p_join(rest: str) -> dict[str, Any]:
    return parse_join_response(rest)


def _p_wrong_seq(rest: str) -> dict[str, Any] | None:
    m = _WRONG_SEQ_RE.match(rest)
    if not m:
        return None
    out: dict[str, Any] = {"first": int(m.group("first"))}
    if m.group("missing") is not None:
        out["missing"] = int(m.group("missing"))
    return out


def _p_setup(rest: str) -> dict[str, Any] | None:
    m = _SETUP_RE.match(rest)
    if not m:
        return None
    return {"ms": float(m.group("ms"))}


def _p_watchdog(rest: str) -> dict[str, Any]:
    m = _KIND_RE.match(rest)
    return {"message_kind": m.group(1) if m else "unknown"}


def _p_ffi_init(rest: str) -> dict[str, Any] | None:
    m = _FFI_VERSION_RE.match(rest)
    if not m:
        return None
    return {"ffi_version": m.group(1)}


def _p_leave(rest: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in _LEAVE_FIELD_RE.findall(rest[:4096]):
        if k not in out:
            out[k] = v
    return out


def _p_word(rest: str) -> dict[str, Any]:
    m = _KIND_RE.match(rest)
    return {"reason": m.group(1) if m else rest[:64]}


def _p_disconnected_room(rest: str) -> dict[str, Any]:
    # 1.1.21+: 'Disconnected from room "name" with reason: X'; 1.1.2: 'disconnected from room with reason: X'
    _, sep, reason = rest.rpartition("with reason: ")
    return {"reason": reason.strip()[:64] if sep else None}


# --------------------------------------------------------------------------------------------------------
# the tables: target -> [(message prefix, kind, parser)]. The parser gets the message with the prefix removed and
# returns the event's data, or None when the record only looks like a marker.

Pattern = tuple[str, str, Callable[[str], "dict[str, Any] | None"]]  # (message prefix, kind, parser)

_ENGINE: list[Pattern] = [  # livekit::rtc_engine (all versions)
    ("failed to connect: ", "connect_retry", lambda r: _p_retry("failed to connect: " + r)),
    ("received session close: ", "session_close", _p_close),
    ("resuming connection... attempt: ", "resume_attempt", _p_attempt),
    ("restarting connection... attempt: ", "restart_attempt", _p_attempt),
    ("resuming connection failed: ", "resume_failed", _p_err),
    ("restarting connection failed: ", "restart_failed", _p_err),
    ("RtcEngine successfully recovered", "recovered", _p_none),
    ("failed to reconnect to the livekit room", "gave_up", _p_none),
    ("session_event is taking too much time: ", "watchdog_session", _p_watchdog),
    ("authentication rejected during connect", "auth_rejected_connect", _p_err),
    ("authentication rejected during resume", "terminal_resume", lambda r: {"error": "auth" + r}),
    ("authentication rejected during restart", "terminal_restart", lambda r: {"error": "auth" + r}),
    ("server requested disconnect during resume: ", "terminal_resume",
     lambda r: {"error": "server requested disconnect", "reason": _p_word(r)["reason"]}),
    ("server requested disconnect during restart: ", "terminal_restart",
     lambda r: {"error": "server requested disconnect", "reason": _p_word(r)["reason"]}),
    ("retry_now signalled", "retry_now", _p_none),
]

_SESSION: list[Pattern] = [  # livekit::rtc_engine::rtc_session (all versions)
    ("received JoinResponse: ", "join_response", _p_join),
    ("connection change, ", "pc_change", _p_pc_change),
    ("Subscriber pc state failed", "pc_failed", lambda r: None if r else {"pc": "subscriber"}),
    ("Publisher pc state failed", "pc_failed", lambda r: None if r else {"pc": "publisher"}),
    ("received reconnect response", "reconnect_response", _p_none),
    ("signal_event taking too much time: ", "watchdog_signal", _p_watchdog),
    ("rtc_event is taking too much time: ", "watchdog_rtc", _p_watchdog),
    ("Wrong packet sequence while retrying: ", "wrong_packet_seq", _p_wrong_seq),
    ("connection setup took ", "setup_took", _p_setup),
    ("publisher data channel ", "dc_closed", lambda r: {"label": r.split("'")[1][:64]} if r.count("'") >= 2
     and r.endswith("closed unexpectedly") else None),
]

_ROOM: list[Pattern] = [  # livekit::room
    ("engine_event is taking too much time: ", "watchdog_engine", _p_watchdog),
    ("synthesizing disconnect for absent participant", "synth_disconnect", _p_none),
    ("Disconnected from room", "room_disconnected", _p_disconnected_room),
    ("disconnected from room with reason", "room_disconnected", _p_disconnected_room),
]

_FFI_ROOM: list[Pattern] = [  # livekit_ffi::server::room / livekit_ffi::room_apis::server::room
    ("error while connecting to a room: ", "connect_error", _p_err),
    ("signal_event taking too much time: ", "watchdog_ffi", _p_watchdog),
    ("timed out waiting for ReadyForRoomEventRequest", "ready_timeout", _p_none),
]

_FFI_SERVER: list[Pattern] = [
    ("initializing ffi server ", "ffi_init", _p_ffi_init),
]


def _signal_table(*, stale_region: bool) -> list[Pattern]:
    t: list[Pattern] = [
        ("signal connection successful", "signal_ok", _p_signal_ok),
        ("signal connection failed on ", "signal_failed", _p_signal_failed),
        ("v1 path not found (404)", "v1_fallback", _p_none),
        ("v0 fallback also failed: ", "v0_failed", _p_err),
        ("unexpected signal error: ", "unexpected_signal_error", _p_err),
        ("fallback connection to: ", "region_connect", _p_url),
    ]
    if stale_region:
        t.append(("failed to fetch region urls: ", "region_failed",
                  lambda r: {"error": r.split("; surfacing original connection error")[0]}))
    return t


_STREAM: list[Pattern] = [("connecting to ", "signal_connecting", _p_url)]
_REGION_PROVIDER: list[Pattern] = [
    ("region fetch failed (", "region_stale", lambda r: {"error": r.rsplit(")", 1)[0]}),
]
_SESSION_LEAVE: list[Pattern] = [("received leave request: ", "leave_request", _p_leave)]

# ONE table per version range
TABLES: dict[str, dict[str, list[Pattern]]] = {
    Era.API: {  # livekit 1.1.2
        "livekit::rtc_engine": _ENGINE,
        "livekit::rtc_engine::rtc_session": _SESSION + _SESSION_LEAVE,
        "livekit::room": _ROOM,
        "livekit_api::signal_client": _signal_table(stale_region=False),
        "livekit_api::signal_client::signal_stream": _STREAM,
        "livekit_ffi::server::room": _FFI_ROOM,
        "livekit_ffi::server": _FFI_SERVER,
    },
    Era.SIGNALING: {  # livekit 1.1.21, 1.2.0
        "livekit::rtc_engine": _ENGINE,
        "livekit::rtc_engine::rtc_session": _SESSION + _SESSION_LEAVE,
        "livekit::room": _ROOM,
        "livekit_signaling": _signal_table(stale_region=True),
        "livekit_signaling::signal_stream": _STREAM,
        "livekit_signaling::region_url_provider": _REGION_PROVIDER,
        "livekit_ffi::server::room": _FFI_ROOM,
        "livekit_ffi::room_apis::server::room": _FFI_ROOM,  # 1.2.0
        "livekit_ffi::server": _FFI_SERVER,
        "livekit_ffi::room_apis::server": _FFI_SERVER,
    },
}

# the lookup actually used: target -> first word of the message -> patterns (a target belongs to one era, or to
# both with identical patterns); and which era a target proves
def _first_word(text: str) -> str:
    i = text.find(" ", 0, 48)
    return text if i < 0 else text[:i]


_INDEX: dict[str, dict[str, list[Pattern]]] = {}
_TARGET_ERA: dict[str, str] = {}
for _era, _table in TABLES.items():
    for _target, _patterns in _table.items():
        if _target in _INDEX:
            continue
        idx: dict[str, list[Pattern]] = {}
        for _pat in _patterns:
            idx.setdefault(_first_word(_pat[0]), []).append(_pat)
        _INDEX[_target] = idx
for _target in TABLES[Era.API]:
    if _target not in TABLES[Era.SIGNALING]:
        _TARGET_ERA[_target] = Era.API
for _target in TABLES[Era.SIGNALING]:
    if _target not in TABLES[Era.API]:
        _TARGET_ERA[_target] = Era.SIGNALING


def era_of_target(target: str) -> str | None:
    if target.startswith("livekit_api::signal_client"):
        return Era.API
    if target.startswith("livekit_signaling") or target.startswith("livekit_net") \
            or target.startswith("livekit_ffi::room_apis"):
        return Era.SIGNALING
    return None


def _vtuple(v: str) -> tuple[int, ...] | None:
    try:
        parts = v.strip().lstrip("v").split(".")[:3]
        return tuple(int("".join(ch for ch in p if ch.isdigit()) or "0") for p in parts)
    except Exception:  # noqa: BLE001
        return None


def era_of_rtc_version(version: str | None) -> str | None:
    """``livekit.rtc.__version__`` → era. Only the three studied builds and their neighbours are certain."""
    if not version:
        return None
    t = _vtuple(version)
    if t is None:
        return None
    if t <= (1, 1, 2):
        return Era.API
    if t >= (1, 1, 21):
        return Era.SIGNALING
    return None  # 1.1.3 … 1.1.20: decided from the records


def era_of_ffi_version(version: str | None) -> str | None:
    t = _vtuple(version or "")
    if t is None:
        return None
    # livekit-signaling replaced livekit_api::signal_client somewhere between 0.12.48 and 0.12.80; #1148 (0.12.67)
    # made the region fetch best-effort
    if t <= (0, 12, 58):
        return Era.API
    if t >= (0, 12, 67):
        return Era.SIGNALING
    return None


def parse(level: int, target: str, line: Any, module_path: str, message: str) -> EngineEvent | None:
    """One record → an :class:`EngineEvent`, or None for everything that is not a phase marker."""
    if target == "libwebrtc":  # the flood: first comparison, nothing else
        return None
    index = _INDEX.get(target)
    if index is None:
        return None
    i = message.find(" ", 0, 48)
    patterns = index.get(message if i < 0 else message[:i])
    if patterns is None:
        return None
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE]
    for prefix, kind, parser in patterns:
        if not message.startswith(prefix):
            continue
        data = parser(message[len(prefix):])
        if data is None:
            continue
        return EngineEvent(kind, level, target, data, _TARGET_ERA.get(target))
    return None


# --------------------------------------------------------------------------------------------------------
# JoinResponse (Debug-printed prost message) → server attributes

_PING_RE = {k: re.compile(rf"\b{k}: (\d{{1,6}})\b") for k in ("ping_interval", "ping_timeout")}
_SI_FIELD_RE = re.compile(r'\b(region|node_id|version|protocol): ("(?:[^"\\]|\\.){0,256}"|-?\d{1,10})')


def parse_join_response(text: str) -> dict[str, Any]:
    """Pick ``server_info { region, node_id, version, protocol }``, ``subscriber_primary`` and the ping settings
    (``ping_interval``, ``ping_timeout``, in s) out of a ``{:?}``-printed JoinResponse. Never returns names,
    identities, tokens or ICE credentials."""
    out: dict[str, Any] = {}
    i = text.rfind("server_info: Some(ServerInfo {")
    if i >= 0:
        j = text.find("}", i)
        block = text[i:j if j > 0 else i + 2048][:4096]
        for k, v in _SI_FIELD_RE.findall(block):
            if k in out:
                continue
            if v.startswith('"'):
                v = _unquote(v)
                if v:
                    out[k] = v
            else:
                out[k] = int(v)
    k = text.rfind("subscriber_primary: ")
    if k >= 0:
        rest = text[k + 20:k + 26]
        if rest.startswith("true"):
            out["subscriber_primary"] = True
        elif rest.startswith("false"):
            out["subscriber_primary"] = False
    for key in ("ping_interval", "ping_timeout"):  # top-level fields, printed after the participants
        found = _PING_RE[key].findall(text)
        if found:
            out[key] = int(found[-1])
    if "version" not in out:  # old servers: top-level server_version
        m = re.search(r'\bserver_version: "((?:[^"\\]|\\.){1,64})"', text[:MAX_MESSAGE])
        if m:
            out["version"] = m.group(1)
    if "region" not in out:
        m = re.search(r'\bserver_region: "((?:[^"\\]|\\.){1,64})"', text[:MAX_MESSAGE])
        if m:
            out["region"] = m.group(1)
    return out


# --------------------------------------------------------------------------------------------------------
# errors → low-cardinality error.type

_STATUS_RE = re.compile(r"(?:status: |handshake error: |\(|Client\(|Server\(|error: )(\d{3})\b")


def _status(text: str) -> int | None:
    for m in _STATUS_RE.finditer(text[:4096]):
        code = int(m.group(1))
        if 100 <= code <= 599:
            return code
    return None


def classify_error(text: str | None) -> str:
    """Rust error text (Debug or Display form) → one of a small set of ``error.type`` values."""
    if not text:
        return "error"
    t = text[:4096]
    low = t.lower()
    if "region fetch timed out" in low:
        return "region_fetch_timeout"
    if "validate request timed out" in low:
        return "validate_timeout"
    if "wait_pc_connection timed out" in low:
        return "pc_timeout"
    if "joinresponse" in low and ("failed to receive" in low or "timed out" in low):
        return "join_timeout"
    if "reconnectresponse" in low and ("failed to receive" in low or "timed out" in low):
        return "reconnect_response_timeout"
    if "server sent leave during reconnect" in low or "leaverequest" in low:
        return "leave"
    if "server requested disconnect" in low:
        return "server_disconnect"
    if "authentication" in low or "tokenformat" in low or "access token" in low:
        return "auth"
    if "signal connection timed out" in low or "transport timed out" in low:
        return "timeout"
    code = _status(t)
    if code is not None and ("status" in low or "handshake" in low or "http" in low or "client" in low
                             or "server error" in low or "client error" in low):
        if code in (401, 403):
            return "auth"
        if code == 404:
            return "http_404"
        if 500 <= code <= 599:
            return "http_5xx"
        if 400 <= code <= 499:
            return "http_4xx"
    if "connection refused" in low or "os error 111" in low or "code: 111" in low:
        return "refused"
    if "dns error" in low or "failed to lookup address" in low or "name or service not known" in low:
        return "dns"
    if "certificate" in low or "unknownissuer" in low or "invalid peer certificate" in low or "tls" in low:
        return "tls"
    if "regionerror" in low or "failed to retrieve region info" in low:
        return "region_fetch"
    if ("connection closed" in low or "connectionclosed" in low or "transport closed" in low
            or "stream closed" in low or "severed" in low or "connection reset" in low):
        return "closed"
    if "pc_state failed" in low or "pc state failed" in low:
        return "pc_failed"
    if "timed out" in low or "timeout" in low:
        return "timeout"
    if "cancel" in low:
        return "cancelled"
    return "error"


# --------------------------------------------------------------------------------------------------------
# URLs (no query string ever leaves this function)

_URL_RE = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]{0,15})://(?:[^@/?#\s]{0,256}@)?"
                     r"(?P<host>\[[0-9a-fA-F:.]+\]|[^/:?#\s@]+)"
                     r"(?::(?P<port>\d{1,5}))?(?P<path>/[^?#\s]*)?")


def url_parts(url: str) -> dict[str, Any]:
    """``ws://host:7880/rtc/v1?join_request=…`` → host, port, path (v0|v1), reconnect flag. The query is only
    inspected for ``reconnect=1`` (livekit 1.1.2 prints it); it is never returned."""
    m = _URL_RE.match(url.strip()[:4096])
    if not m:
        return {}
    scheme = m.group("scheme").lower()
    host = m.group("host").strip("[]")
    port = int(m.group("port")) if m.group("port") else (443 if scheme in ("wss", "https") else 80)
    path = m.group("path") or "/"
    out: dict[str, Any] = {"host": host, "port": port}
    p = path.rstrip("/")
    if p.endswith("/rtc/v1"):
        out["path"] = "v1"
    elif p.endswith("/rtc"):
        out["path"] = "v0"
    q = url.partition("?")[2]
    if q:
        params = q.split("#")[0].split("&")
        if "reconnect=1" in params or "reconnect=true" in params:
            out["reconnect"] = True
    out["cloud"] = host.endswith(".livekit.cloud") or host.endswith(".livekit.run")
    return out
