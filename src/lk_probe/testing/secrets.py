"""Check that spans carry no credentials: LiveKit access tokens (JWTs), ``access_token`` query strings, the signal
URL's ``join_request=`` blob, ``Bearer`` headers, or any literal secret the test knows about.

Usage::

    from lk_probe.testing.secrets import assert_no_secrets, find_secrets
    assert find_secrets(receiver.spans(), extra=[token, api_secret]) == []
    assert_no_secrets(spans, extra=[token])          # same, with the findings as the AssertionError message

API:

* ``find_secrets(spans, *, extra=()) -> list[str]``: scans every span's name, attribute keys and values, event names
  and attributes, link attributes, status message, scope and resource values. Each finding names the span, the place
  and what matched; the secret itself is masked, so the findings are safe to print.
* ``assert_no_secrets(spans, *, extra=())``.
* ``PATTERNS``: ``(label, compiled regex)`` pairs used for the scan.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from lk_probe.spans import SpanRecord, SpanSet

__all__ = ["PATTERNS", "assert_no_secrets", "find_secrets"]

PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("JWT-looking string", re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.")),
    ("'access_token'", re.compile(r"access_token", re.IGNORECASE)),
    ("'join_request='", re.compile(r"join_request=")),
    ("'Bearer '", re.compile(r"Bearer ")),
)

_WHOLE_JWT = re.compile(PATTERNS[0][1].pattern + r"[A-Za-z0-9_-]*")


def _mask(text: str) -> str:
    return text[:6] + "…" if len(text) > 8 else "…"


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace")
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)


def _places(span: SpanRecord) -> Iterator[tuple[str, Any]]:
    yield "name", span.name
    yield "status message", span.status_message
    yield "scope", span.scope
    for where, attrs in (("attribute", span.attributes), ("resource", span.resource)):
        for key, value in attrs.items():
            yield f"{where} key {key!r}", key
            yield f"{where} {key!r}", value
    for ev in span.events:
        yield f"event {ev.name!r}", ev.name
        for key, value in ev.attributes.items():
            yield f"event {ev.name!r} attribute {key!r}", [key, value]
    for link in span.links:
        for key, value in link.attributes.items():
            yield f"link attribute {key!r}", [key, value]


def find_secrets(spans: Iterable[SpanRecord] | SpanSet, *, extra: Iterable[str] = ()) -> list[str]:
    """Human-readable findings (secrets masked), one per span, place and pattern; empty when clean."""
    literals = [(f"extra secret #{i}", s) for i, s in enumerate(extra, 1) if s]
    findings: list[str] = []
    for span in spans if isinstance(spans, SpanSet) else SpanSet(spans):
        name = _WHOLE_JWT.sub("<JWT>", span.name)  # the name itself may be the leak
        for _, secret in literals:
            name = name.replace(secret, "<secret>")
        for place, value in _places(span):
            for text in _strings(value):
                for label, pattern in PATTERNS:
                    m = pattern.search(text)
                    if m:
                        findings.append(
                            f"span {name!r} ({span.span_id}) {place}: {label} {_mask(m.group(0))!r}"
                        )
                for label, secret in literals:
                    if secret in text:
                        findings.append(f"span {name!r} ({span.span_id}) {place}: {label} {_mask(secret)!r}")
    return list(dict.fromkeys(findings))


def assert_no_secrets(spans: Iterable[SpanRecord] | SpanSet, *, extra: Iterable[str] = ()) -> None:
    findings = find_secrets(spans, extra=extra)
    if findings:
        raise AssertionError(f"{len(findings)} secret(s) in spans:\n  " + "\n  ".join(findings))
