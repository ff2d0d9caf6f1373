"""The bridge, driven through the REAL ``livekit.rtc._ffi_client.ffi_event_callback`` (records serialized as the
Rust side sends them): routing to the machine, what the user's ``livekit`` logger still sees, LIVEKIT_RTC_DEBUG,
install/uninstall, errors never reaching the callback thread, thread safety, room events with exact times."""

from __future__ import annotations

import ctypes
import logging
import os
import threading

import pytest

from lk_probe import _errors
from lk_probe._rust import bridge
from lk_probe._rust.machine import EngineMachine
from lk_probe._sink import ListSink

ffi = pytest.importorskip("livekit.rtc._ffi_client")
from livekit.rtc._proto import ffi_pb2  # noqa: E402

LV = {10: ffi_pb2.LogLevel.LOG_DEBUG, 20: ffi_pb2.LogLevel.LOG_INFO, 30: ffi_pb2.LogLevel.LOG_WARN,
      40: ffi_pb2.LogLevel.LOG_ERROR, 5: ffi_pb2.LogLevel.LOG_TRACE}

RECORDS = [
    (10, "libwebrtc", "libwebrtc::imp::peer_connection_factory", "(p2p_transport_channel.cc:1867): Channel[0|1|RW]"),
    (20, "livekit_signaling::signal_stream", None, "connecting to ws://127.0.0.1:7880/rtc/v1"),
    (10, "livekit_signaling", None, "signal connection successful: path=v1, single_pc_mode=true"),
    (10, "tungstenite::handshake::client", None, "Client handshake done."),
    (10, "livekit::rtc_engine::rtc_session", None,
     'received JoinResponse: JoinResponse { subscriber_primary: false, server_info: Some(ServerInfo { version: '
     '"1.9.0", protocol: 16, region: "eu", node_id: "N1" }) }'),
    (5, "livekit::rtc_engine", None, "a trace record"),
    (10, "livekit::rtc_engine::rtc_session", None, "connection change, Connecting Publisher"),
    (10, "livekit::rtc_engine::rtc_session", None, "connection change, Connected Publisher"),
    (30, "livekit::rtc_engine", None, 'received session close: "server request to leave" Migration Resume'),
    (40, "livekit::rtc_engine", None, "resuming connection... attempt: 1"),
    (20, "livekit::rtc_engine", None, "RtcEngine successfully recovered"),
]


# the line number every delivered record carries: a Rust engine left over by an earlier test in this process may still
# log through the same callback, and those records are not this test's to compare
LINE = 424242


def deliver(records):
    """Call the real ffi_event_callback with a LogBatch, exactly as liblivekit_ffi does."""
    ev = ffi_pb2.FfiEvent()
    for lvl, target, module, msg in records:
        r = ev.logs.records.add()
        r.level = LV[lvl]
        r.target = target
        r.module_path = module or target
        r.line = LINE
        r.message = msg
    data = ev.SerializeToString()
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    ffi.ffi_event_callback(buf, len(data))


class Catch(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.got = []

    def emit(self, record):
        if f":{LINE}:" in record.getMessage():  # only what the test delivered
            self.got.append((record.levelno, record.getMessage(), record.pathname, record.funcName, record.lineno))


@pytest.fixture
def livekit_logger(monkeypatch):
    lg = logging.getLogger("livekit")
    h = Catch()
    old = lg.level
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG)
    monkeypatch.delenv("LIVEKIT_RTC_DEBUG", raising=False)
    monkeypatch.delenv(bridge.SAVED_ENV, raising=False)
    monkeypatch.setenv("LK_PROBE_STRICT", "1")
    _errors.reset_for_tests()
    yield h
    bridge.uninstall()
    lg.removeHandler(h)
    lg.setLevel(old)


def _machine():
    sink = ListSink()
    m = EngineMachine(sink, version="1.1.21")
    m.connect_started(1, "ws://127.0.0.1:7880")
    m.connect_finished(2, None)
    return sink, m


def test_user_sees_exactly_what_they_saw_without_lk_probe(livekit_logger):
    deliver(RECORDS)
    without = list(livekit_logger.got)
    assert without and all(lvl >= 20 or not msg.startswith(("libwebrtc", "livekit")) for lvl, msg, *_ in without)
    livekit_logger.got.clear()
    sink, m = _machine()
    assert bridge.install(lambda: m)
    assert os.environ["LIVEKIT_RTC_DEBUG"] == "1"
    deliver(RECORDS)
    assert livekit_logger.got == without
    # ... and the machine got the DEBUG markers the user's logger never saw
    assert "rtc.reconnect" in sink.phases() and "rtc.reconnect.attempt" in sink.phases()


def test_user_debug_is_honoured(livekit_logger, monkeypatch):
    monkeypatch.setenv("LIVEKIT_RTC_DEBUG", "true")
    deliver(RECORDS)
    without = list(livekit_logger.got)
    assert any(msg.startswith("libwebrtc") for _, msg, *_ in without)
    livekit_logger.got.clear()
    sink, m = _machine()
    bridge.install(lambda: m)
    deliver(RECORDS)
    assert livekit_logger.got == without
    bridge.uninstall()
    assert os.environ["LIVEKIT_RTC_DEBUG"] == "true"


def test_install_uninstall_idempotent_and_env_restored(livekit_logger):
    real = ffi.logger
    sink, m = _machine()
    assert bridge.install(lambda: m) and bridge.install(lambda: m) and bridge.installed()
    assert ffi.logger is not real and ffi.logger.name == "livekit"  # the proxy delegates attributes
    assert os.environ[bridge.SAVED_ENV] == "<unset>"
    bridge.uninstall()
    bridge.uninstall()
    assert ffi.logger is real and not bridge.installed()
    assert "LIVEKIT_RTC_DEBUG" not in os.environ and bridge.SAVED_ENV not in os.environ


def test_inherited_env_from_a_parent_with_the_bridge(livekit_logger, monkeypatch):
    monkeypatch.setenv("LIVEKIT_RTC_DEBUG", "1")
    monkeypatch.setenv(bridge.SAVED_ENV, "<unset>")  # what a parent process with the bridge installed leaves
    sink, m = _machine()
    bridge.install(lambda: m)
    deliver(RECORDS[:3])
    assert not any(msg.startswith(("libwebrtc", "livekit_signaling:")) and lvl == 10
                   for lvl, msg, *_ in livekit_logger.got)
    bridge.uninstall()
    assert "LIVEKIT_RTC_DEBUG" not in os.environ


def test_machine_bug_never_reaches_the_callback(livekit_logger):
    class Broken:
        def record(self, ev, t):
            raise RuntimeError("machine bug")

    bridge.install(lambda: Broken())
    deliver(RECORDS)  # must not raise
    assert any(w == "rust.bridge.record" for w, _ in _errors.errors)
    assert any("RtcEngine successfully recovered" in msg for _, msg, *_ in livekit_logger.got)  # still forwarded
    _errors.reset_for_tests()

    def get_machine():
        raise ValueError("lead bug")

    bridge.install(get_machine)
    deliver(RECORDS)
    assert any(w == "rust.bridge.record" for w, _ in _errors.errors)


def test_no_machine_means_records_only_forwarded(livekit_logger):
    bridge.install(lambda: None)
    deliver(RECORDS)
    assert any("resuming connection" in msg for _, msg, *_ in livekit_logger.got)
    assert not _errors.errors


def test_threads(livekit_logger):
    sink, m = _machine()
    bridge.install(lambda: m)
    errors = []

    def run():
        try:
            for _ in range(200):
                deliver(RECORDS)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=run) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and not _errors.errors
    assert m.open_count() <= 12
    # every end belongs to a started key, none twice
    started, ended = set(), set()
    for c in sink.calls:
        if c.op == "start":
            started.add(c.key)
        elif c.op == "end":
            assert c.key in started and c.key not in ended
            ended.add(c.key)


def test_room_events_through_the_queue_filter(livekit_logger):
    got = []

    class M:
        def record(self, ev, t):
            pass

        def room_event(self, name, t, **data):
            got.append((name, data))

    bridge.install(lambda: M(), room_events=True)
    for which, body in (("connection_state_changed", {"state": 2}), ("reconnecting", {}),
                        ("disconnected", {"reason": 8}), ("active_speakers_changed", {})):
        ev = ffi_pb2.FfiEvent()
        ev.room_event.room_handle = 7
        sub = getattr(ev.room_event, which)
        sub.SetInParent()
        for k, v in body.items():
            setattr(sub, k, v)
        assert bridge._event_filter(ev) is False  # never queues anything
    audio = ffi_pb2.FfiEvent()
    audio.audio_stream_event.stream_handle = 1
    assert bridge._event_filter(audio) is False
    assert got == [("connection_state_changed", {"room_handle": 7, "state": 2}), ("reconnecting", {"room_handle": 7}),
                   ("disconnected", {"room_handle": 7, "reason": 8})]


def test_room_events_are_opt_in(livekit_logger):
    got = []

    class M:
        def record(self, ev, t):
            pass

        def room_event(self, name, t, **data):
            got.append(name)

    bridge.install(lambda: M())  # the default: Room.on handlers feed room events (the room patch)
    ev = ffi_pb2.FfiEvent()
    ev.room_event.room_handle = 1
    ev.room_event.reconnecting.SetInParent()
    assert bridge._event_filter(ev) is False and got == []
    assert bridge.attach_events() is False


def test_capture_debug_off_leaves_the_env_alone(livekit_logger):
    deliver(RECORDS)
    without = list(livekit_logger.got)
    livekit_logger.got.clear()
    sink, m = _machine()
    bridge.install(lambda: m, capture_debug=False)
    assert "LIVEKIT_RTC_DEBUG" not in os.environ
    deliver(RECORDS)
    assert livekit_logger.got == without
    assert "rtc.reconnect" in sink.phases()  # WARN/ERROR markers still arrive
    assert "rtc.join" not in sink.phases()
    bridge.uninstall()
    assert "LIVEKIT_RTC_DEBUG" not in os.environ
