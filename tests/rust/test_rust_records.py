"""records.parse: one table per version range, exact record shapes as the Rust SDK logs them."""

from __future__ import annotations

import pytest

from lk_probe._rust.records import (Era, classify_error, era_of_ffi_version, era_of_rtc_version, parse,
                                    parse_join_response, url_parts)

W, E, I, D = 30, 40, 20, 10


def p(level, target, msg):
    return parse(level, target, 1, target, msg)


@pytest.mark.parametrize("target,msg,kind,data", [
    ("livekit_api::signal_client::signal_stream", "connecting to wss://x.livekit.cloud/rtc?sdk=python", "signal_connecting",
     {"url": "wss://x.livekit.cloud/rtc?sdk=python"}),
    ("livekit_signaling::signal_stream", "connecting to ws://127.0.0.1:1/rtc/v1", "signal_connecting", None),
    ("livekit_api::signal_client", 'signal connection failed on v0 path: Timeout("signal connection timed out")',
     "signal_failed", {"path": "v0", "error": 'Timeout("signal connection timed out")'}),
    ("livekit_signaling", "signal connection successful: path=v1, single_pc_mode=true", "signal_ok",
     {"path": "v1", "single_pc": True}),
    ("livekit_signaling", "v1 path not found (404), falling back to v0 path", "v1_fallback", {}),
    ("livekit_signaling", "failed to fetch region urls: failed to retrieve region info: region fetch timed out; "
     "surfacing original connection error", "region_failed",
     {"error": "failed to retrieve region info: region fetch timed out"}),
    ("livekit::rtc_engine", 'failed to connect: Signal(Timeout("transport timed out")), retrying... (2/3)',
     "connect_retry", {"error": 'Signal(Timeout("transport timed out"))', "i": 2, "n": 3}),
    ("livekit::rtc_engine", 'received session close: "signal client closed: \\"stream closed\\"" UnknownReason Resume',
     "session_close", {"source": 'signal client closed: "stream closed"', "reason": "UnknownReason", "action": "Resume"}),
    ("livekit::rtc_engine", "resuming connection... attempt: 0", "resume_attempt", {"i": 0}),
    ("livekit::rtc_engine", "restarting connection... attempt: 10", "restart_attempt", {"i": 10}),
    ("livekit::rtc_engine", "failed to reconnect to the livekit room", "gave_up", {}),
    ("livekit::rtc_engine::rtc_session", "connection change, Connecting Subscriber", "pc_change",
     {"state": "Connecting", "pc": "subscriber"}),
    ("livekit::rtc_engine::rtc_session", "Subscriber pc state failed", "pc_failed", {"pc": "subscriber"}),
    ("livekit::rtc_engine::rtc_session", 'signal_event taking too much time: Answer(SessionDescription { r#type: "answer" })',
     "watchdog_signal", {"message_kind": "Answer"}),
    ("livekit::rtc_engine::rtc_session", "Wrong packet sequence while retrying: 1046 > 1040, 5 packets missing",
     "wrong_packet_seq", {"first": 1046, "missing": 5}),
    ("livekit::rtc_engine::rtc_session", "connection setup took 71 ms", "setup_took", {"ms": 71.0}),
    ("livekit_ffi::room_apis::server::room", "error while connecting to a room: engine: signal failure: x",
     "connect_error", {"error": "engine: signal failure: x"}),
    ("livekit_ffi::server", "initializing ffi server v0.12.48", "ffi_init", {"ffi_version": "0.12.48"}),
])
def test_recognised(target, msg, kind, data):
    ev = p(W, target, msg)
    assert ev is not None and ev.kind == kind
    if data is not None:
        assert ev.data == data


@pytest.mark.parametrize("target,msg", [
    ("libwebrtc", "connecting to ws://x/rtc"),  # right text, wrong target
    ("livekit::rtc_engine", "resuming connection... attempt: x"),  # near miss
    ("livekit::rtc_engine", "failed to connect: boom"),  # no '(i/n)'
    ("livekit::rtc_engine::rtc_session", "connection change, Connecting Nobody"),
    ("livekit::rtc_engine::rtc_session", "Subscriber pc state failed!"),
    ("livekit_signaling", "signal connection failed on v2 path: x"),
    ("livekit_signalingX", "signal connection successful: path=v1"),
    ("reqwest::connect", "connecting to ws://x"),
])
def test_near_misses_are_not_recognised(target, msg):
    assert p(W, target, msg) is None


def test_eras():
    assert p(I, "livekit_api::signal_client::signal_stream", "connecting to ws://a/rtc").era == Era.API
    assert p(I, "livekit_signaling::signal_stream", "connecting to ws://a/rtc").era == Era.SIGNALING
    assert p(E, "livekit::rtc_engine", "resuming connection... attempt: 1").era is None
    assert era_of_rtc_version("1.1.2") == Era.API and era_of_rtc_version("1.1.21") == Era.SIGNALING
    assert era_of_rtc_version("1.2.0") == Era.SIGNALING and era_of_rtc_version("1.1.10") is None
    assert era_of_ffi_version("0.12.48") == Era.API and era_of_ffi_version("0.13.2") == Era.SIGNALING


@pytest.mark.parametrize("text,etype", [
    ('Timeout("signal connection timed out")', "timeout"),
    ('Signal(Timeout("transport timed out"))', "timeout"),
    ("Handshake { status: 404 }", "http_404"),
    ("WsError(Http(Response { status: 404, version: HTTP/1.1 }))", "http_404"),
    ("Handshake { status: 503 }", "http_5xx"),
    ("handshake error: 503 Service Unavailable", "http_5xx"),
    ('Signal(Client(401, "no access token"))', "auth"),
    ('Connection("IO error: Connection refused (os error 111)")', "refused"),
    ("WsError(Io(Os { code: 111, kind: ConnectionRefused }))", "refused"),
    ('Signal(Timeout("failed to receive livekit_protocol::JoinResponse"))', "join_timeout"),
    ('Connection("wait_pc_connection timed out")', "pc_timeout"),
    ('Signal(RegionError("region fetch timed out"))', "region_fetch_timeout"),
    ("signal failure: server sent leave during reconnect: reason=StateMismatch, action=Reconnect", "leave"),
    ("signal failure: transport closed", "closed"),
    ("something else entirely", "error"),
])
def test_classify(text, etype):
    assert classify_error(text) == etype


def test_join_response_fields_never_names_or_credentials():
    jr = ('JoinResponse { room: Some(Room { sid: "RM_1", name: "secret-room" }), participant: Some(ParticipantInfo '
          '{ identity: "bob", region: "wrong" }), ice_servers: [IceServer { username: "u", credential: "c" }], '
          'subscriber_primary: true, server_info: Some(ServerInfo { edition: Cloud, version: "1.9.1", protocol: 16, '
          'region: "us-east-2", node_id: "NC_1", debug_info: "" }), fast_publish: false }')
    assert parse_join_response(jr) == {"version": "1.9.1", "protocol": 16, "region": "us-east-2", "node_id": "NC_1",
                                       "subscriber_primary": True}


def test_url_parts_never_return_the_query():
    u = url_parts("wss://p.livekit.cloud/rtc?access_token=eyJabc.def.ghi&reconnect=1&sid=PA_1")
    assert u == {"host": "p.livekit.cloud", "port": 443, "path": "v0", "reconnect": True, "cloud": True}
    assert url_parts("ws://[::1]:7880/rtc/v1")["host"] == "::1"
    assert url_parts("not a url") == {}
    u = url_parts("wss://user:hunter2@p.livekit.cloud:8443/rtc/v1")  # userinfo never becomes the host
    assert (u["host"], u["port"], u["path"]) == ("p.livekit.cloud", 8443, "v1")
