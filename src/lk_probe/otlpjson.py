"""Spans as OTLP JSON (the JSON encoding of ``ExportTraceServiceRequest``, as OpenTelemetry's file exporters write it).

``load(path)`` reads a file or a folder of files; each file holds one JSON object (``{"resourceSpans": [...]}``) or
JSON lines of them (the Collector's file exporter). Ids are hex strings, 64-bit integers may be strings, enums may be
numbers or names — all as the OTLP JSON encoding allows. ``dumps(spans)`` writes the same encoding.
Malformed input raises :class:`OtlpJsonError` with a one-line message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .spans import SpanEvent, SpanLink, SpanRecord, SpanSet

__all__ = ["OtlpJsonError", "load", "loads", "dumps"]

_KINDS = {0: "INTERNAL", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_KIND_NUM = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}
_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}
_STATUS_NUM = {"UNSET": 0, "OK": 1, "ERROR": 2}


class OtlpJsonError(ValueError):
    """The input is not OTLP JSON (the message is one line, fit for a command line)."""


def _value(v: dict[str, Any]) -> Any:
    if not isinstance(v, dict) or not v:
        return None
    key, x = next(iter(v.items()))
    if key == "intValue":
        return int(x)
    if key == "doubleValue":
        return float(x)
    if key == "arrayValue":
        return tuple(_value(i) for i in (x or {}).get("values", []))
    if key == "kvlistValue":
        return _attrs((x or {}).get("values", []))
    return x  # stringValue, boolValue, bytesValue


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv["key"]: _value(kv.get("value") or {}) for kv in kvs or [] if isinstance(kv, dict) and "key" in kv}


def _enum(v: Any, names: dict[int, str], prefix: str) -> str:
    if isinstance(v, str) and not v.isdigit():
        return v.removeprefix(prefix) or names[0]
    return names.get(int(v or 0), names[0])


def _records(doc: Any) -> list[SpanRecord]:
    if not isinstance(doc, dict) or "resourceSpans" not in doc:
        raise OtlpJsonError("not OTLP JSON: no resourceSpans")
    out = []
    for rs in doc["resourceSpans"] or []:
        resource = _attrs((rs.get("resource") or {}).get("attributes"))
        for ss in rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or []:
            scope = (ss.get("scope") or ss.get("instrumentationLibrary") or {}).get("name", "")
            for s in ss.get("spans") or []:
                status = s.get("status") or {}
                end = int(s.get("endTimeUnixNano") or 0)
                out.append(SpanRecord(
                    name=s["name"], trace_id=s["traceId"].lower(), span_id=s["spanId"].lower(),
                    parent_id=(s.get("parentSpanId") or "").lower() or None,
                    start_ns=int(s.get("startTimeUnixNano") or 0), end_ns=end or None,
                    kind=_enum(s.get("kind"), _KINDS, "SPAN_KIND_"),
                    status_code=_enum(status.get("code"), _STATUS, "STATUS_CODE_"),
                    status_message=status.get("message", ""), attributes=_attrs(s.get("attributes")),
                    events=[SpanEvent(e.get("name", ""), int(e.get("timeUnixNano") or 0), _attrs(e.get("attributes")))
                            for e in s.get("events") or []],
                    links=[SpanLink(lk.get("traceId", ""), lk.get("spanId", ""), _attrs(lk.get("attributes")))
                           for lk in s.get("links") or []],
                    resource=resource, scope=scope))
    return out


def loads(text: str, *, where: str = "input") -> list[SpanRecord]:
    """The spans of one document (a JSON object, or JSON lines of them)."""
    try:
        docs = [json.loads(text)]
    except ValueError:
        docs = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    docs.append(json.loads(line))
                except ValueError as e:
                    raise OtlpJsonError(f"{where}: malformed JSON on line {n}: {e.msg}") from None
    try:
        return [r for d in docs for r in _records(d)]
    except OtlpJsonError as e:
        raise OtlpJsonError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise OtlpJsonError(f"{where}: not OTLP JSON ({type(e).__name__}: {e})") from None


def load(path: str | Path) -> SpanSet:
    """The spans of a file, or of every ``*.json`` / ``*.jsonl`` file in a folder."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".json", ".jsonl") and f.is_file())
        if not files:
            raise OtlpJsonError(f"{p}: no .json or .jsonl files in this folder")
    elif p.is_file():
        files = [p]
    else:
        raise OtlpJsonError(f"{p}: no such file or folder")
    out: list[SpanRecord] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise OtlpJsonError(f"{f}: cannot read it ({e})") from None
        out += loads(text, where=str(f))
    return SpanSet(out)


def _any(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, (tuple, list)):
        return {"arrayValue": {"values": [_any(x) for x in v]}}
    return {"stringValue": str(v)}


def _kvs(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _any(v)} for k, v in attrs.items() if v is not None]


def dumps(spans: Iterable[SpanRecord]) -> str:
    """One OTLP JSON document (``ExportTraceServiceRequest``) holding the spans, grouped by resource and scope."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    resources: dict[str, dict[str, Any]] = {}
    for s in spans:
        rkey = json.dumps(s.resource, sort_keys=True, default=str)
        resources[rkey] = s.resource
        span: dict[str, Any] = {
            "traceId": s.trace_id, "spanId": s.span_id, "name": s.name, "kind": _KIND_NUM.get(s.kind, 1),
            "startTimeUnixNano": str(s.start_ns), "attributes": _kvs(s.attributes),
            "status": {"code": _STATUS_NUM.get(s.status_code, 0), **({"message": s.status_message}
                                                                     if s.status_message else {})}}
        if s.parent_id:
            span["parentSpanId"] = s.parent_id
        if s.end_ns is not None:
            span["endTimeUnixNano"] = str(s.end_ns)
        if s.events:
            span["events"] = [{"timeUnixNano": str(e.t_ns), "name": e.name, "attributes": _kvs(e.attributes)}
                              for e in s.events]
        groups.setdefault(rkey, {}).setdefault(s.scope, []).append(span)
    doc = {"resourceSpans": [
        {"resource": {"attributes": _kvs(resources[r])},
         "scopeSpans": [{"scope": {"name": scope}, "spans": sp} for scope, sp in scopes.items()]}
        for r, scopes in groups.items()]}
    return json.dumps(doc)
