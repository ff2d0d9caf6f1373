"""Secret scanner: no JWT, access_token, join_request= value or API secret reaches the sink, whatever the records
carry (livekit 1.1.2 prints full URLs with their query string)."""

from __future__ import annotations

import json
import re

import jwt
from hypothesis import HealthCheck, given, settings, strategies as st

from lk_probe import _redact as redact
from lk_probe._rust.machine import EngineMachine
from lk_probe._rust.records import parse
from lk_probe._sink import ListSink

API_SECRET = "lkp-test-secret-Zq8v3NwY7rTq2m-4f9Kd2pX"
redact.add_secret(API_SECRET)
TOKEN = jwt.encode({"iss": "APIkey", "sub": "agent", "video": {"roomJoin": True, "room": "r"}}, API_SECRET,
                   algorithm="HS256")
JOIN_REQ = "CiQKBnB5dGhvbhIFMS4xLjIaBmxpbnV4IgAqAzEuMjIBMToECAEQARAB"
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.")

SS = "livekit_api::signal_client::signal_stream"
SC = "livekit_api::signal_client"
ENG = "livekit::rtc_engine"
SES = "livekit::rtc_engine::rtc_session"
URL = f"wss://p.livekit.cloud/rtc?access_token={TOKEN}&sdk=python&protocol=16&join_request={JOIN_REQ}&sid=PA_1"

LEAKY = [
    (20, SS, f"connecting to {URL}"),
    (20, "livekit_signaling::signal_stream", f"connecting to ws://h:1/rtc/v1?join_request={JOIN_REQ}"),
    (30, SC, f'signal connection failed on v0 path: WsError(Http(Response {{ status: 401, headers: {{"authorization": '
             f'"Bearer {TOKEN}"}}, uri: {URL} }}))'),
    (30, ENG, f'failed to connect: Signal(Client(401, "invalid token {TOKEN} secret={API_SECRET}")), retrying... (1/3)'),
    (20, SC, f"fallback connection to: wss://p-use2a.livekit.cloud?access_token={TOKEN}"),
    (10, SES, 'received JoinResponse: JoinResponse { ice_servers: [IceServer { urls: ["turn:t:3478"], username: '
              f'"user", credential: "{API_SECRET}" }}], subscriber_primary: true, server_info: Some(ServerInfo {{ '
              'version: "1.9", protocol: 16, region: "r", node_id: "n" }) }'),
    (30, ENG, f'received session close: "signal client closed: \\"{TOKEN}\\"" UnknownReason Resume'),
    (40, ENG, "resuming connection... attempt: 1"),
    (20, SS, f"connecting to {URL}&reconnect=1"),
    (40, ENG, f"resuming connection failed: signal failure: ws failure: HTTP error: 401 access_token={TOKEN}"),
    (40, SES, f"signal_event taking too much time: Answer(SessionDescription {{ sdp: \"a=ice-pwd:{API_SECRET}\" }})"),
    (40, ENG, "restarting connection... attempt: 2"),
    (40, ENG, "restarting connection failed: proxy http://bob:proxypass-9f8e7d@proxy:3128 refused"),
    (40, ENG, f"restarting connection failed: Bearer {TOKEN} join_request={JOIN_REQ}"),
    (40, "livekit_ffi::server::room", f"error while connecting to a room: engine: {URL} {API_SECRET}"),
]


def _blob(sink):
    out = []
    for c in sink.calls:
        out.append(json.dumps({"a": c.attributes, "m": c.error_message, "n": c.name, "p": c.phase}, default=str))
    return "\n".join(out)


def _assert_clean(blob):
    assert not JWT_RE.search(blob), blob
    assert TOKEN not in blob and TOKEN.split(".")[1] not in blob
    assert "access_token" not in blob
    assert "join_request=" not in blob and JOIN_REQ not in blob
    assert API_SECRET not in blob and "proxypass-9f8e7d" not in blob


def _feed(rows, connect=True, finish_error=None):
    sink = ListSink()
    m = EngineMachine(sink, version="1.1.2")
    t = 1_700_000_000_000_000_000
    m.connect_started(t, URL)
    for i, (lvl, tgt, msg) in enumerate(rows):
        t += 1_000_000
        if i == 7 and connect:
            m.connect_finished(t, finish_error)
        m.record(parse(lvl, tgt, 1, tgt, msg), t)
    m.closed(t + 1)
    return sink


def test_nothing_secret_reaches_the_sink():
    sink = _feed(LEAKY)
    blob = _blob(sink)
    assert len(sink.calls) > 15 and "p.livekit.cloud" in blob  # the records did produce phases
    _assert_clean(blob)


def test_nothing_secret_in_connect_error():
    sink = _feed(LEAKY[:6], connect=True, finish_error=f"engine: {URL} token {TOKEN}")
    _assert_clean(_blob(sink))


def test_scanner_can_fail():
    """The scanner finds a secret when redaction is bypassed (so a passing test means something)."""
    assert JWT_RE.search(json.dumps({"m": URL}))


pieces = st.sampled_from([TOKEN, API_SECRET, f"access_token={TOKEN}", f"join_request={JOIN_REQ}", f"Bearer {TOKEN}",
                          URL, " ", "\"", "?", "&", "=", ":", "x", "é", "\n", "status: 401", "Timeout("])


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(pieces, max_size=12).map("".join))
def test_redact_fuzz(text):
    out = redact.clean(text)
    assert TOKEN not in out and API_SECRET not in out and JOIN_REQ not in out
    assert not JWT_RE.search(out)


def test_replayed_data_files_leak_nothing():
    """Every transcribed and captured sequence (1.1.2 captures print ?sdk=…&protocol=… query strings, the JoinResponse
    carries names and identities) replays into sink calls without a query string, JWT or token."""
    from replay import DATA, replay

    names = sorted(p.name for p in DATA.glob("*.jsonl"))
    assert len(names) > 40
    for name in names:
        sink, _, _ = replay(name)
        blob = _blob(sink)
        _assert_clean(blob)
        assert "?sdk=" not in blob and "&protocol=" not in blob and "sid=PA_" not in blob, name
        assert "cap-room" not in blob and "alice" not in blob, name  # room name / identity (PII) stay out
