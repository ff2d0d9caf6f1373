"""Issue 5, metrics: a per-phase duration histogram and an outcome counter through the OTel metrics API."""

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from lk_probe._recorder import Recorder

_reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[_reader]))  # once per process (OTel allows one)


def _points(name):
    data = _reader.get_metrics_data()
    out = []
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    out.extend(m.data.data_points)
    return out


def test_phase_duration_histogram_and_outcome_counter(capspans):
    rec = Recorder(None)
    for i, err in enumerate((None, None, "timeout")):
        rec.start("rtc.signal", i)
        rec.end(i, error_type=err)
    hist = {(p.attributes["lk_probe.phase"], p.attributes["lk_probe.outcome"]): p
            for p in _points("lk_probe.phase.duration")}
    count = {(p.attributes["lk_probe.phase"], p.attributes["lk_probe.outcome"]): p.value
             for p in _points("lk_probe.phase.outcome")}
    assert hist[("rtc.signal", "ok")].count == 2 and hist[("rtc.signal", "error")].count == 1
    assert count[("rtc.signal", "ok")] == 2 and count[("rtc.signal", "error")] == 1
    assert 0 <= hist[("rtc.signal", "ok")].sum < 1.0  # seconds
