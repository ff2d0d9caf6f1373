"""Install/uninstall are idempotent and fully reversible, options and
OTEL_* variables are honoured, ids are derived from the job id, budgets export stall records while a phase is open."""

from __future__ import annotations

import logging
import time

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import lk_probe
from lk_probe import _catalogue, _config, _ids, _patching, _provider
from lk_probe._recorder import Recorder, _watchdog
from lk_probe._redact import clean as redact
from lk_probe.spans import SpanSet


@pytest.fixture
def memory_provider():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    lk_probe.uninstall()
    provider.shutdown()


def _targets():
    """Every (module, path) lk_probe patches on this version, resolved while installed."""
    lk_probe.install(tracer_provider=TracerProvider())
    targets = _patching.patched()
    originals = {t: _patching.find_target(*t)[2].__wrapped__ for t in targets}
    lk_probe.uninstall()
    return targets, originals


def test_install_three_times_uninstall_three_times_restores_every_target(memory_provider):
    targets, originals = _targets()
    assert len(targets) >= 15  # worker, job process and Room patch points all found on this version
    provider, _ = memory_provider
    for _ in range(3):
        lk_probe.install(tracer_provider=provider)
    assert lk_probe.installed()
    for t in targets:
        current = _patching.find_target(*t)[2]
        assert isinstance(current, _patching.PROXY), t
        assert not isinstance(current.__wrapped__, _patching.PROXY), f"{t} wrapped twice"
    for _ in range(3):
        lk_probe.uninstall()
    assert not lk_probe.installed()
    assert _patching.patched() == []
    for t in targets:
        owner, name, current = _patching.find_target(*t)
        assert not isinstance(owner.__dict__.get(name), _patching.PROXY), f"{t} still wrapped"
        assert current is originals[t], t


def test_uninstall_before_install_is_harmless():
    lk_probe.uninstall()
    lk_probe.uninstall()
    assert not lk_probe.installed()


def test_unknown_option_is_a_clear_error():
    with pytest.raises(TypeError, match="unknown option"):
        lk_probe.install(no_such_option=True)
    assert not lk_probe.installed()


@pytest.mark.parametrize("var,value", [("OTEL_SDK_DISABLED", "true"),
                                       ("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "redis,livekit"),
                                       ("LK_PROBE_ENABLED", "false")])
def test_disabling_variables_make_install_a_no_op(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    lk_probe.install(tracer_provider=TracerProvider())
    try:
        assert _patching.patched() == []
    finally:
        lk_probe.uninstall()


def test_malformed_env_option_is_ignored_with_one_warning(monkeypatch, caplog):
    from lk_probe import _errors

    _errors.reset_for_tests()
    monkeypatch.setenv("LK_PROBE_SCHEDULE_DELAY_MS", "soon")
    with caplog.at_level(logging.WARNING, logger="lk_probe"):
        opts = _config.resolve()
        _config.resolve()
    assert opts.schedule_delay_ms == 1000
    assert sum("LK_PROBE_SCHEDULE_DELAY_MS" in r.getMessage() for r in caplog.records) == 1


def test_env_options_and_kwargs_precedence(monkeypatch):
    monkeypatch.setenv("LK_PROBE_RTC", "false")
    monkeypatch.setenv("LK_PROBE_FLUSH_TIMEOUT_S", "1.5")
    assert _config.resolve().rtc is False
    assert _config.resolve(rtc=True).rtc is True
    assert _config.resolve().flush_timeout_s == 1.5


def test_only_requested_parts_are_patched(memory_provider):
    provider, _ = memory_provider
    lk_probe.install(tracer_provider=provider, worker=False, job_process=False, api=False)
    assert _patching.patched() == [("livekit.rtc.room", "Room.connect")]
    lk_probe.uninstall()
    lk_probe.install(tracer_provider=provider, worker=False, job_process=False, rtc=False)
    assert {module for module, _ in _patching.patched()} == {"livekit.api.agent_dispatch_service",
                                                             "livekit.api.room_service"}


def test_ids_are_derived_from_the_dispatch_id_else_the_job_id():
    # explicit dispatch: the dispatch's trace, which the dispatcher derives from CreateDispatch's answer
    assert _ids.trace_id_for("AJ_1", "AD_1") == _ids.trace_id_for("AJ_2", "AD_1") == _ids.dispatch_trace_id_for("AD_1")
    assert _ids.dispatch_trace_id_for("AD_1") != _ids.dispatch_trace_id_for("AD_2")
    ctx = _ids.job_parent_context("AJ_1", 5, dispatch_id="AD_1")
    assert trace.get_current_span(ctx).get_span_context().trace_id == _ids.dispatch_trace_id_for("AD_1")
    # automatic dispatch (no dispatch id): the job's own trace, as before
    assert _ids.trace_id_for("AJ_1", "") == _ids.trace_id_for("AJ_1") != _ids.dispatch_trace_id_for("AJ_1")
    assert _ids.trace_id_for("AJ_1") == _ids.trace_id_for("AJ_1") != _ids.trace_id_for("AJ_2")
    assert _ids.root_span_id_for("AJ_1", 5) != _ids.root_span_id_for("AJ_1", 6)  # one root per worker attempt
    ctx = _ids.job_parent_context("AJ_1", 5)
    sc = trace.get_current_span(ctx).get_span_context()
    assert (sc.trace_id, sc.span_id, sc.is_remote) == (_ids.trace_id_for("AJ_1"), _ids.root_span_id_for("AJ_1", 5),
                                                        True)


def test_forced_ids_apply_only_to_lk_probe_spans(memory_provider):
    provider, exporter = memory_provider
    lk_probe.install(tracer_provider=provider)
    rec = Recorder(None)
    with _ids.forced_ids(_ids.trace_id_for("AJ_x"), _ids.root_span_id_for("AJ_x")):
        rec.start("job", "job")
    rec.end("job")
    other = provider.get_tracer("someone-else").start_span("other")
    other.end()
    spans = SpanSet(exporter.get_finished_spans())
    job = spans.phase("job")
    assert job.trace_id == format(_ids.trace_id_for("AJ_x"), "032x")
    assert job.span_id == format(_ids.root_span_id_for("AJ_x"), "016x")
    assert spans.named("other")[0].trace_id != job.trace_id


def test_no_phase_becomes_a_span_inside_suppress_instrumentation(memory_provider):
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    provider, exporter = memory_provider
    lk_probe.install(tracer_provider=provider)
    rec = Recorder(None)
    with suppress_instrumentation():
        rec.start("job", "quiet")
        rec.event(None, _catalogue.EV_LEAVE)
        rec.end("quiet")
    rec.start("job", "loud")
    rec.end("loud")
    assert [s.name for s in exporter.get_finished_spans()] == ["job"]


def test_a_phase_inside_suppress_instrumentation_has_no_stall_record(memory_provider, monkeypatch, caplog):
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    provider, exporter = memory_provider
    monkeypatch.setenv("LK_PROBE_BUDGET_RTC_SIGNAL", "0.1")
    lk_probe.install(tracer_provider=provider)
    rec = Recorder(None, label="AJ_quiet")
    with caplog.at_level(logging.WARNING, logger="lk_probe"), suppress_instrumentation():
        rec.start("rtc.signal", "quiet")
        time.sleep(0.5)  # past the budget and its first doubling
        rec.end("quiet")
    assert not exporter.get_finished_spans()
    assert "AJ_quiet" not in caplog.text


def test_budget_crossing_exports_a_stall_record_while_the_phase_is_open(memory_provider, monkeypatch, caplog):
    provider, exporter = memory_provider
    monkeypatch.setenv("LK_PROBE_BUDGET_RTC_SIGNAL", "0.2")
    lk_probe.install(tracer_provider=provider)
    rec = Recorder(None, attributes={"lk.job_id": "AJ_stall"}, label="AJ_stall")
    with caplog.at_level(logging.WARNING, logger="lk_probe"):
        rec.start("rtc.signal", "sig")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(SpanSet(exporter.get_finished_spans()).phases("stall")) < 2:
            time.sleep(0.02)
        open_while_stalled = rec.is_open("sig")
        rec.end("sig", error_type="timeout")
    spans = SpanSet(exporter.get_finished_spans())
    # all start with the phase (the longer, later record first in start order): in the order they were recorded
    stalls = sorted(spans.phases("stall"), key=lambda s: s.end_ns)
    sig = spans.phase("rtc.signal")
    assert open_while_stalled
    assert [s.attributes["lk_probe.stall.count"] for s in stalls[:2]] == [1, 2]  # at 1× and 2× the budget
    assert all(s.parent_id == sig.span_id and s.attributes["lk_probe.stall.phase"] == "rtc.signal" for s in stalls)
    assert {s.name for s in stalls} == {"stall rtc.signal"}
    first = stalls[0]
    assert 0.2 <= first.attributes["lk_probe.stall.elapsed"] < 0.5
    # the record's bar covers the phase's time open so far: from the phase's start to the record
    assert first.start_ns == sig.start_ns
    assert abs(first.duration - first.attributes["lk_probe.stall.elapsed"]) < 0.05
    assert first.end < sig.end  # exported before the phase ended
    assert any("rtc.signal of job AJ_stall still open" in r.getMessage() for r in caplog.records)


def _switches(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))


def test_the_watchdog_sleeps_while_no_budget_is_open(memory_provider, monkeypatch):
    provider, exporter = memory_provider
    monkeypatch.setenv("LK_PROBE_BUDGET_RTC_SIGNAL", "0.05")
    lk_probe.install(tracer_provider=provider)
    rec = Recorder(None)
    rec.start("rtc.signal", "sig")
    time.sleep(0.15)
    rec.end("sig")
    assert SpanSet(exporter.get_finished_spans()).phases("stall")  # it was awake while the budget was open
    time.sleep(0.3)  # the ended phase's next deadline (4× the budget) passes, void
    thread = _watchdog._thread
    before = _switches(thread.native_id)
    time.sleep(0.6)
    # a thread polling every 50 ms would have woken a dozen times
    assert _switches(thread.native_id) - before <= 2


def test_stall_records_can_be_switched_off(memory_provider, monkeypatch):
    provider, exporter = memory_provider
    monkeypatch.setenv("LK_PROBE_BUDGET_RTC_SIGNAL", "0.05")
    lk_probe.install(tracer_provider=provider, stall_records=False)
    rec = Recorder(None)
    rec.start("rtc.signal", "sig")
    time.sleep(0.3)
    rec.end("sig")
    assert not SpanSet(exporter.get_finished_spans()).phases("stall")


def test_every_catalogue_phase_has_a_valid_parent_and_an_env_override():
    for p in _catalogue.PHASES:
        assert p.parent is None or p.parent in _catalogue.BY_NAME, p.name
        assert p.env.startswith("LK_PROBE_BUDGET_")
    with pytest.raises(KeyError, match="unknown lk_probe phase"):
        _catalogue.phase("nope")


def test_redaction_keeps_tokens_and_query_strings_out():
    jwt = ".".join(("eyJhbGciOiJIUzI1NiJ9", "eyJzdWIiOiJhZ2VudCJ9", "c2lnbmF0dXJlc2lnbmF0dXJl"))  # no literal JWT
    text = f"connecting to wss://x.livekit.cloud/rtc?access_token={jwt}&sdk=python Bearer {jwt}"
    out = redact(text)
    assert "eyJ" not in out and "access_token" not in out and "sdk=python" not in out
    assert "wss://x.livekit.cloud/rtc" in out


def test_provider_built_from_otel_env_exports_over_otlp_http(install_from_env, otlp_receiver):
    install_from_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp_receiver.http_endpoint, OTEL_SERVICE_NAME="svc-from-env",
                     OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test")
    rec = Recorder(None)
    rec.start("rtc.connect", "c")
    rec.end("c")
    got = otlp_receiver.wait_for_phase("rtc.connect", timeout=5)
    assert got.resource["service.name"] == "svc-from-env"
    assert got.resource["deployment.environment"] == "test"
    assert got.kind == "CLIENT"
    assert lk_probe.flush(2.0)


def test_grpc_protocol_from_env(install_from_env, otlp_receiver):
    install_from_env(OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp_receiver.grpc_endpoint,
                     OTEL_EXPORTER_OTLP_INSECURE="true")
    rec = Recorder(None)
    rec.start("job.assignment", "a")
    rec.end("a", error_type="assignment_timeout")
    got = otlp_receiver.wait_for_phase("job.assignment", timeout=5)
    assert got.status_code == "ERROR" and got.attributes["error.type"] == "assignment_timeout"


def test_opentelemetry_instrument_finds_the_instrumentor_by_entry_point():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "livekit"]
    cls = ep.load()
    assert cls is lk_probe.LiveKitInstrumentor
    inst = cls()
    inst.instrument(tracer_provider=TracerProvider(), skip_dep_check=True)  # what opentelemetry-instrument does
    try:
        assert lk_probe.installed() and ("livekit.rtc.room", "Room.connect") in _patching.patched()
    finally:
        inst.uninstrument()
    assert _patching.patched() == []


def test_nothing_is_recorded_or_built_after_uninstall(memory_provider, monkeypatch):
    provider, exporter = memory_provider
    global_before = trace.get_tracer_provider()
    lk_probe.install(tracer_provider=provider)
    rec = Recorder(None)  # e.g. a room still connected when lk_probe was uninstalled
    lk_probe.uninstall()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    rec.start("rtc.reconnect", "late")  # a late room event
    rec.end("late")
    assert exporter.get_finished_spans() == ()
    assert _provider.current() is None  # no provider was built from OTEL_* (nor made global)
    assert trace.get_tracer_provider() is global_before


def test_the_job_process_prewarm_starts_what_a_job_would_start_first(install_from_env, monkeypatch, tmp_path):
    """The watchdog thread, the phase metrics and the journal's directory are ready before the job starts: a thread
    start waits for the new thread to run, which on a busy machine took milliseconds between the job's start and its
    entrypoint."""
    from lk_probe import _journal, _recorder
    from lk_probe._patches import job

    fresh = _recorder._Watchdog()
    monkeypatch.setattr(_recorder, "_watchdog", fresh)
    install_from_env(OTEL_TRACES_EXPORTER="none", LK_PROBE_JOURNAL_DIR=str(tmp_path / "journal"))
    job._warm_up()
    assert fresh._thread is not None and fresh._thread.is_alive()
    assert str(tmp_path / "journal") in _journal._checked


def test_the_engine_bridge_s_attributes_are_redacted_once(memory_provider, monkeypatch):
    """The Rust bridge's sink cleans what the machine emits; the Recorder behind it does not clean it again."""
    from lk_probe import _redact
    from lk_probe._rust.out import Out

    provider, exporter = memory_provider
    lk_probe.install(tracer_provider=provider)
    cleaned = []
    real = _redact.clean
    monkeypatch.setattr(_redact, "clean", lambda text, *a, **k: cleaned.append(text) or real(text, *a, **k))
    out = Out(Recorder(None))
    out.start("rtc.reconnect", "r", time.time_ns(), {"lk_probe.reconnect.reason": "ws://h:1/rtc?access_token=x"})
    out.end("r", time.time_ns(), attrs={"lk_probe.leave.reason": "closed"})
    assert sorted(cleaned) == ["closed", "ws://h:1/rtc?access_token=x"]  # each once
    span = SpanSet(exporter.get_finished_spans()).phase("rtc.reconnect")
    assert span.attributes["lk_probe.reconnect.reason"] == "ws://h:1/rtc"


def test_a_held_span_is_released_after_its_timeout_without_stall_records(memory_provider):
    from lk_probe._recorder import holds

    provider, exporter = memory_provider
    lk_probe.install(tracer_provider=provider, stall_records=False)
    span = provider.get_tracer("t").start_span("held")
    holds.hold(span, 0.1)
    holds.end(span)
    assert not exporter.get_finished_spans()  # held
    time.sleep(0.4)
    assert [s.name for s in exporter.get_finished_spans()] == ["held"]  # released by the watchdog at the timeout
