"""Crash survival: the job process appends every phase start and end to a small file that survives SIGKILL.

A span is exported only when it ends, and a process killed with -9 ends nothing. So the job process writes one JSON
line per phase start (with the span's trace id, span id and parent span id) and per end, through an ``O_APPEND``
descriptor with no user-space buffer: once ``os.write`` returns, the line is in the kernel and survives the process.
When the worker sees the process die, it reads the file and exports the phases that were still open as spans with
their original ids, ending at the time of death, ERROR, ``lk_probe.incomplete=true``: the resume that was hanging
when the process was killed appears in the job's trace where it belongs. The job process writes ``done`` when its job task finishes; the worker removes the file when the process ends.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

# one encoder for every line (json.dumps with options builds a new one per call)
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode

MAX_BYTES = 1 << 20  # a journal never grows past 1 MiB (phases, not records, are journaled)


def directory() -> str:
    # per user, so that nobody else can plant files or links in it
    return os.environ.get("LK_PROBE_JOURNAL_DIR") or os.path.join(tempfile.gettempdir(), f"lk_probe-{os.getuid()}")


_checked: set[str] = set()  # directories made and found private in this process


def check_directory(d: str) -> None:
    """Make ``d`` (mode 0700) and make sure it is this user's and private; once per directory and process."""
    if d in _checked:
        return
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{d} is not a private directory of this user; no crash journal")
    _checked.add(d)


def path_for(job_id: str, pid: int) -> str:
    safe = "".join(c for c in job_id if c.isalnum() or c in "_-")[:64] or "job"
    return os.path.join(directory(), f"{safe}.{pid}.jsonl")


class Journal:
    def __init__(self, path: str) -> None:
        check_directory(os.path.dirname(path))
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        self._size = 0
        self._lock = threading.Lock()

    def _write(self, obj: dict[str, Any]) -> None:
        self._append((_encode(obj) + "\n").encode())

    def _append(self, data: bytes, end: bool = False) -> None:
        with self._lock:
            # past the cap only end records are written, so that nothing already exported is ever re-exported
            if self._fd < 0 or (self._size + len(data) > MAX_BYTES and not end):
                return
            os.write(self._fd, data)
            self._size += len(data)

    def started(self, span: Any) -> None:
        sc = span.get_span_context()
        if not sc.is_valid:
            return
        parent = getattr(span, "parent", None)
        scope = getattr(getattr(span, "instrumentation_scope", None), "name", "")
        # lk_probe's own attributes only: other instrumentations' (transcripts, prompts...) never go to disk
        attrs = {k: v for k, v in (span.attributes or {}).items()
                 if isinstance(v, (str, bool, int, float))} if scope == "lk_probe" else {}
        self._write({"op": "s", "p": span.name, "tid": format(sc.trace_id, "032x"), "sid": format(sc.span_id, "016x"),
                     "psid": format(parent.span_id, "016x") if parent is not None and parent.is_valid else None,
                     "sampled": bool(sc.trace_flags.sampled), "t": span.start_time, "a": attrs})

    def ended(self, span: Any) -> None:
        sc = span.get_span_context()
        if sc.is_valid:
            self._append(b'{"op":"e","sid":"%016x"}\n' % sc.span_id, end=True)  # the line _write would make

    def attributes(self, span: Any, attributes: dict[str, Any]) -> None:
        """Attributes set on an open span after it started: merged into the span if the process dies."""
        sc = span.get_span_context()
        if sc.is_valid:
            attrs = {k: v for k, v in (attributes or {}).items() if isinstance(v, (str, bool, int, float))}
            self._write({"op": "a", "sid": format(sc.span_id, "016x"), "a": attrs})

    def event(self, span: Any, name: str, t: int, attributes: dict[str, Any]) -> None:
        """An event on an open span (a watchdog line during a resume): replayed onto the span if the process dies."""
        sc = span.get_span_context()
        if sc.is_valid:
            attrs = {k: v for k, v in (attributes or {}).items() if isinstance(v, (str, bool, int, float))}
            self._write({"op": "v", "sid": format(sc.span_id, "016x"), "n": name, "t": t, "a": attrs})

    def verdict(self, attributes: dict[str, Any]) -> None:
        """The job's diagnosis, for the worker to put on the job's root span (which it owns)."""
        self._write({"op": "f", "a": {k: v for k, v in attributes.items() if isinstance(v, (str, bool, int, float))}})

    def done(self) -> None:
        """The job task finished: the process is about to exit normally."""
        self._write({"op": "done"})

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


# the journal of the job running in this process; None outside a job. Set only through open_for_job / end_job.
active: Journal | None = None


def open_for_job(job_id: str, pid: int) -> None:
    """The job process starts its job: journal it (replacing a journal a previous job left open)."""
    global active
    if active is not None:
        active.close()
    active = Journal(path_for(job_id, pid))


def end_job(*, done: bool) -> None:
    """The job ended (``done``: normally, so the worker knows the file needs no export)."""
    global active
    j, active = active, None
    if j is not None:
        if done:
            j.done()
        j.close()


def _processor_base() -> type:
    from opentelemetry.sdk.trace import SpanProcessor

    return SpanProcessor


class JournalProcessor(_processor_base()):  # type: ignore[misc]
    """A SpanProcessor that journals every span of the provider (lk_probe's and livekit-agents') while a job runs.

    It subclasses the SDK's SpanProcessor so that hooks newer SDKs add (``_on_ending`` in 1.45) keep working.
    """

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        j = active
        if j is not None:
            try:
                j.started(span)
            except Exception:  # noqa: BLE001 - never disturb the span pipeline
                pass

    def on_end(self, span: Any) -> None:
        j = active
        if j is not None:
            try:
                j.ended(span)
            except Exception:  # noqa: BLE001
                pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def completed(path: str) -> bool:
    """Did the job process finish its job (the journal ends with ``done``)?"""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 64))
            return b'"op":"done"' in f.read()
    except OSError:
        return False


def verdict(path: str) -> dict[str, Any]:
    """The diagnosis the job process handed over (the root span's ``lk_probe.finding.*`` attributes), or {}."""
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for raw in reversed(lines):
        if raw.startswith(b'{"op":"f"'):
            try:
                return dict(json.loads(raw).get("a") or {})
            except ValueError:
                return {}
    return {}


def read_open(path: str) -> list[dict[str, Any]]:
    """The phases started and never ended, in start order; a torn last line (the kill hit a write) is ignored."""
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    started: dict[str, dict[str, Any]] = {}
    for raw in lines:
        try:
            row = json.loads(raw)
        except ValueError:
            continue
        if row.get("op") == "s" and "sid" in row:
            started[row["sid"]] = {**row, "events": []}
        elif row.get("op") == "e":
            started.pop(row.get("sid"), None)
        elif row.get("op") == "v" and row.get("sid") in started:
            started[row["sid"]]["events"].append(row)
        elif row.get("op") == "a" and row.get("sid") in started:
            started[row["sid"]].setdefault("a", {}).update(row.get("a") or {})
    return list(started.values())


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def export_open(path: str, tracer: Any, *, t_death: int, cause: str) -> int:
    """Export the phases still open in ``path`` as incomplete ERROR spans with their original ids through
    ``tracer`` (one whose id generator honours :func:`lk_probe._ids.forced_ids`); return how many."""
    from . import _catalogue as c
    from ._ids import forced_ids

    rows = read_open(path)
    for row in rows:
        tid, sid = int(row["tid"], 16), int(row["sid"], 16)
        flags = TraceFlags(TraceFlags.SAMPLED if row.get("sampled", True) else TraceFlags.DEFAULT)
        parent = None
        if row.get("psid"):
            parent = trace.set_span_in_context(NonRecordingSpan(
                SpanContext(tid, int(row["psid"], 16), is_remote=True, trace_flags=flags)))
        attrs = {k: v for k, v in (row.get("a") or {}).items() if isinstance(v, (str, bool, int, float))}
        attrs.update({c.PHASE: row["p"], c.INCOMPLETE: True, c.OUTCOME: c.ERR_INCOMPLETE,
                      c.ERROR_TYPE: "process_died"})
        with forced_ids(tid, sid):
            span = tracer.start_span(row["p"], context=parent, attributes=attrs, start_time=int(row["t"]))
        for ev in row.get("events", ()):
            span.add_event(ev["n"], ev.get("a") or {}, timestamp=int(ev["t"]))
        span.set_status(Status(StatusCode.ERROR, f"the job process died ({cause}) while this phase was open"))
        span.end(end_time=max(t_death, int(row["t"])))
    return len(rows)
