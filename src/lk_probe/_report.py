"""What ``lk-probe`` says about a job, shared by ``show`` / ``diagnose``, ``serve`` and the HTML report: where the spans
come from (an OTLP JSON file or folder, or a running ``lk-probe serve``), the job traces in them, and the text of a
job's findings and verdict."""

from __future__ import annotations

import re
from typing import Any

from . import _catalogue as c
from .otlpjson import OtlpJsonError, load, loads
from .spans import SpanSet

SERVE_SPANS_PATH = "/lk-probe/spans"  # where `lk-probe serve` hands out what it keeps, as OTLP JSON
_URL = re.compile(r"^https?://[^/?#\s]+", re.I)


def load_source(source: str) -> SpanSet:
    """The spans of SOURCE: ``http://HOST:PORT`` (a running ``lk-probe serve``), else an OTLP JSON file or folder.
    Raises OtlpJsonError with a one-line message."""
    base = _URL.match(source)
    if base is None:
        return load(source)
    import urllib.error
    import urllib.request

    url = base.group(0) + SERVE_SPANS_PATH
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        raise OtlpJsonError(f"{url}: HTTP {e.code}: is this a running lk-probe serve?") from None
    except (OSError, UnicodeDecodeError) as e:
        raise OtlpJsonError(f"{url}: no lk-probe serve answers there ({getattr(e, 'reason', e)})") from None
    return SpanSet(loads(text, where=url))


def job_ids(trace: SpanSet) -> list[str]:
    return sorted({str(s.attributes[c.JOB_ID]) for s in trace if s.attributes.get(c.JOB_ID)})


def job_traces(spans: SpanSet, job: str | None = None) -> list[tuple[str, SpanSet]]:
    """(job id, that job's trace) per job in ``spans``, in the order of their traces' first span."""
    return [(job_id, trace) for trace in spans.traces().values() for job_id in job_ids(trace)
            if job is None or job == job_id]


def room(trace: Any) -> str | None:
    return next((str(s.attributes[c.ROOM_NAME]) for s in trace if s.attributes.get(c.ROOM_NAME)), None)


def seconds(trace: SpanSet) -> float:
    """From the trace's first start to its last end, in s."""
    if not trace:
        return 0.0
    end = max(s.end_ns if s.end_ns is not None else s.start_ns for s in trace)
    return (end - trace[0].start_ns) / 1e9


def findings_text(findings: list[Any]) -> str:
    if not findings:
        return "  no finding: nothing slow or failed in this job\n"
    lines = []
    for i, f in enumerate(findings, 1):
        lines += [f"  {i}. {f.code} — {f.title}", f"     {f.summary}", f"     evidence: {f.evidence}",
                  f"     check: {f.check}"]
    return "\n".join(lines) + "\n"


def verdict(job_id: str | None, trace: SpanSet, findings: list[Any]) -> str:
    """One line: the job, its room, how long its trace is, and its first finding (or that it has none)."""
    who = f"job {job_id}" if job_id else f"trace {trace[0].trace_id if trace else '?'}"
    where = f" · room {room(trace)}" if room(trace) else ""
    if not findings:
        said = "ok: no finding"
    else:
        more = f" (+{len(findings) - 1} more)" if len(findings) > 1 else ""
        said = f"{findings[0].code}: {findings[0].summary}{more}"
    return f"{who}{where} · {seconds(trace):.2f} s · {said}"
