"""Phases reach a real OTLP receiver within about a second; a collector that refuses or
black-holes connections never blocks the caller, gives one warning, and makes lk_probe's flushes short."""

from __future__ import annotations

import logging
import socket
import time

import pytest

import lk_probe
from lk_probe import _provider
from lk_probe._recorder import Recorder


def test_ended_phases_arrive_within_about_a_second_without_a_flush(install_from_env, otlp_receiver):
    install_from_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp_receiver.http_endpoint)
    rec = Recorder(None)
    lags = []
    for i in range(3):
        rec.start("rtc.join", ("j", i))
        rec.end(("j", i))
        ended = time.time()
        got = otlp_receiver.wait_for(lambda s, i=i: s.name == "rtc.join" and len(otlp_receiver.spans()) > i,
                                     timeout=5)
        lags.append(got.received_ns / 1e9 - ended)
    assert max(lags) < 1.5, lags  # 1 s batch delay + export, far below the SDK's 5 s default


def test_the_exporter_reads_the_proxy_environment_once(install_from_env, otlp_receiver, monkeypatch):
    import requests.sessions

    reads = []
    real = requests.sessions.get_environ_proxies
    monkeypatch.setattr(requests.sessions, "get_environ_proxies", lambda *a, **k: reads.append(a) or real(*a, **k))
    install_from_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp_receiver.http_endpoint)
    rec = Recorder(None)
    for i in range(3):
        rec.start("rtc.join", ("j", i))
        rec.end(("j", i))
        assert lk_probe.flush(5.0)
    assert len(otlp_receiver.requests) == 3  # three exports, each a POST
    assert len(reads) == 1  # a plain requests session reads the environment on every one


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("mode", ["refused", "black-holed"])
def test_a_dead_collector_never_blocks_and_warns_once(install_from_env, caplog, mode):
    hole = None
    if mode == "refused":
        port = _closed_port()
    else:  # accepts connections (kernel backlog) and never answers
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        port = hole.getsockname()[1]
    from lk_probe import _errors

    _errors.reset_for_tests()
    try:
        with caplog.at_level(logging.WARNING, logger="lk_probe"):
            install_from_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{port}/v1/traces",
                             OTEL_EXPORTER_OTLP_TIMEOUT="2", OTEL_BSP_SCHEDULE_DELAY="50")
            rec = Recorder(None)
            worst = 0.0
            deadline = time.monotonic() + 20
            i = 0
            while time.monotonic() < deadline and _provider.exporters_healthy():
                t0 = time.perf_counter()
                rec.start("rtc.signal", i)
                rec.end(i)
                worst = max(worst, time.perf_counter() - t0)
                i += 1
                time.sleep(0.05)
            assert not _provider.exporters_healthy(), "the dead collector was never noticed"
            for j in range(200):  # keep recording while it is down
                t0 = time.perf_counter()
                rec.start("rtc.signal", ("more", j))
                rec.end(("more", j))
                worst = max(worst, time.perf_counter() - t0)
            t0 = time.perf_counter()
            lk_probe.flush()
            flush_took = time.perf_counter() - t0
        warnings = [r for r in caplog.records if f"exporting spans to http://127.0.0.1:{port}/" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert str(port) in warnings[0].getMessage()
        # recording never waits for the network: a blocking export would take the 2 s export timeout (the bounds
        # leave room for a loaded shared machine; the cost of recording itself is measured in benchmarks/)
        assert worst < 0.5, worst
        assert flush_took < 2.5, flush_took  # cut short while the collector is down (else up to the 5 s flush bound)
    finally:
        if hole is not None:
            hole.close()
