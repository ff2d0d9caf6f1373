"""OTLP trace exports as they arrive on the wire: an ``ExportTraceServiceRequest`` body (protobuf, optionally gzip or
deflate compressed) into :class:`lk_probe.spans.SpanRecord` objects. Shared by ``lk-probe serve`` and the test
receiver (:mod:`lk_probe.testing.otlp`).

``decode(body, encoding)`` raises :class:`WireError` (a ValueError, one line) for anything that is not such a body.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

from .spans import SpanRecord, _kv

__all__ = ["MAX_BODY", "WireError", "decompress", "decode", "records"]

MAX_BODY = 64 * 1024 * 1024


class WireError(ValueError):
    """Not a valid OTLP trace export body."""


def _inflate(body: bytes, wbits: int) -> bytes:
    """Decompress, never to more than MAX_BODY bytes (a small compressed body can expand without bound)."""
    d = zlib.decompressobj(wbits)
    out = d.decompress(body, MAX_BODY + 1)
    if len(out) > MAX_BODY or d.unconsumed_tail:
        raise ValueError(f"decompressed body over {MAX_BODY} bytes")
    if not d.eof:
        raise ValueError("truncated compressed body")
    return out


def decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return _inflate(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return _inflate(body, zlib.MAX_WBITS)
        except zlib.error:
            return _inflate(body, -zlib.MAX_WBITS)  # raw deflate
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def decode(body: bytes, encoding: str = "") -> Any:
    """The ``ExportTraceServiceRequest`` in a (compressed) protobuf body."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    try:
        return ExportTraceServiceRequest.FromString(decompress(body, encoding))
    except (DecodeError, ValueError, OSError, EOFError, zlib.error) as exc:
        raise WireError(f"malformed OTLP body: {exc}") from None


def records(request: Any, received_ns: int | None = None) -> list[SpanRecord]:
    """The spans of an ``ExportTraceServiceRequest``, each stamped with ``received_ns`` (default: now)."""
    now = time.time_ns() if received_ns is None else received_ns
    out = []
    for rs in request.resource_spans:
        res_attrs = _kv(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                rec = SpanRecord.from_otlp(span, res_attrs, ss.scope.name)
                rec.received_ns = now
                out.append(rec)
    return out
