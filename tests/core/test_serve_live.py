"""``lk-probe serve`` with a real worker exporting to it: the double holds the job's first signal upgrade past the SDK's
5 s timeout, so the stall record of ``rtc.signal`` (2 s budget) is printed while the connect is still pending, and the
job's verdict (a signal connect timeout), waterfall and findings are printed within 1 s of the job's end."""

from __future__ import annotations

import pytest
from test_serve import Serve

from lk_probe._findings import diagnose
from lk_probe._report import load_source

pytestmark = [pytest.mark.e2e, pytest.mark.lk_netns]


def test_a_real_job_through_serve(probe, tmp_path):
    serve = Serve(tmp_path / "saved")
    try:
        probe.otlp_env = {**probe.otlp_env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{serve.base}/v1/traces"}
        probe.start_worker(LKP_MODE="connect")
        probe.double.faults.add("signal_upgrade_delay", delay=8.0, count=1)
        job_id = probe.dispatch(room="serve-room")

        t_stall, stall = serve.wait_timed(lambda x: x.startswith(f"stall · job {job_id} · rtc.signal"), timeout=60)
        t_done, verdict = serve.wait_timed(lambda x: x.startswith(f"== job {job_id}"), timeout=60)
        (connected,) = probe.markers("connected")
        assert t_stall < connected["t"], "the stall record must be printed while the connect is still pending"
        assert "budget 2.0 s" in stall

        trace = load_source(serve.base).trace(probe.trace_id(job_id))
        root = trace.phase("job")
        assert t_done - root.end_ns / 1e9 < 1.0, (t_done, root.end_ns)
        found = diagnose(trace)
        assert found and found[0].code == "signal_connect_timeout", (found, trace.summary())
        assert verdict.startswith(f"== job {job_id} · room serve-room · ") and f" · {found[0].code}: " in verdict
        serve.wait_line(lambda x: f"1. {found[0].code}" in x)
        out = serve.output()
        assert out.index(verdict) < out.index("rtc.signal", out.index(verdict)) < out.index(f"1. {found[0].code}")
    finally:
        assert serve.stop() == 0
