from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lk_probe.spans import SpanEvent, SpanLink, SpanRecord, SpanSet
from lk_probe.testing.secrets import assert_no_secrets, find_secrets

# built at run time so that no JWT-looking literal is committed
JWT = ".".join(("eyJhbGciOiJIUzI1NiJ9", "eyJzdWIiOiJhZ2VudCIsInZpZGVvIjp7fX0", "c2lnbmF0dXJlLXNpZ25hdHVyZQ"))
API_SECRET = "s3cr3t-api-secret-value"


def span(**kw) -> SpanRecord:
    return SpanRecord(kw.pop("name", "rtc.signal"), "a" * 32, "b" * 16, **kw)


CLEAN = span(attributes={"server.address": "127.0.0.1", "lk_probe.signal.path": "v1", "url.path": "/rtc/v1",
                         "tags": ("a", "b"), "port": 7880},
             events=[SpanEvent("closed", 1, {"code": 1006})], resource={"service.name": "agent"},
             status_code="ERROR", status_message="websocket closed", scope="lk_probe")


def test_clean_spans_have_no_findings():
    assert find_secrets([CLEAN], extra=[API_SECRET, ""]) == []
    assert_no_secrets(SpanSet([CLEAN]))


@pytest.mark.parametrize(
    ("record", "place", "label"),
    [
        (span(attributes={"url.full": f"wss://h/rtc?x=1&access_token={JWT}"}), "attribute 'url.full'", "JWT-looking"),
        (span(attributes={"url.query": "ACCESS_TOKEN=x"}), "attribute 'url.query'", "'access_token'"),
        (span(attributes={"access_token": "x"}), "attribute key 'access_token'", "'access_token'"),
        (span(attributes={"paths": ("/rtc/v1?join_request=CiQ", "ok")}), "attribute 'paths'", "'join_request='"),
        (span(attributes={"http.request.header.authorization": ("Bearer abc",)}),
         "attribute 'http.request.header.authorization'", "'Bearer '"),
        (span(status_message=f"401 for token {JWT}"), "status message", "JWT-looking"),
        (span(name=f"connect {JWT}"), "name", "JWT-looking"),
        (span(events=[SpanEvent("retry", 1, {"url": "wss://h/rtc?access_token=abc"})]),
         "event 'retry' attribute 'url'", "'access_token'"),
        (span(links=[SpanLink("c" * 32, "d" * 16, {"auth": "Bearer x"})]), "link attribute 'auth'", "'Bearer '"),
        (span(resource={"lk.token": JWT}), "resource 'lk.token'", "JWT-looking"),
        (span(attributes={"config": API_SECRET}), "attribute 'config'", "extra secret #1"),
    ],
)
def test_each_pattern_in_each_place(record, place, label):
    findings = find_secrets([CLEAN, record], extra=[API_SECRET])
    assert len(findings) >= 1
    assert any(f"({'b' * 16}) {place}: {label}" in f for f in findings), findings
    # the findings never repeat the secret itself
    assert not any(JWT in f or API_SECRET in f or "abc" in f for f in findings)
    with pytest.raises(AssertionError, match="secret"):
        assert_no_secrets([record], extra=[API_SECRET])


def test_a_leaking_span_name_is_masked_in_the_findings():
    findings = find_secrets([span(name=f"connect {JWT} {API_SECRET}")], extra=[API_SECRET])
    assert findings[0].startswith("span 'connect <JWT> <secret>' (")


def test_short_jwt_like_strings_are_not_findings():
    assert find_secrets([span(attributes={"v": "eyJabc.def.ghi", "w": "Bearer"})]) == []


def test_real_sdk_span():
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    s = tp.get_tracer("t").start_span("job.connect", attributes={"server.address": "127.0.0.1"})
    s.add_event("connecting", {"url": f"ws://127.0.0.1:7880/rtc?access_token={JWT}"})
    s.end()
    tp.shutdown()
    findings = find_secrets(exporter.get_finished_spans(), extra=[JWT])
    place = "event 'connecting' attribute 'url'"
    assert [f.split(": ", 1)[1] for f in findings] == [
        "JWT-looking string 'eyJhbG…'", "'access_token' 'access…'", "extra secret #1 'eyJhbG…'"
    ]
    assert all(place in f for f in findings)
