"""A per-phase duration histogram and an outcome counter through the OTel metrics API."""

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


def _snapshot():
    hist = {(p.attributes["lk_probe.phase"], p.attributes["lk_probe.outcome"]): (p.count, p.sum)
            for p in _points("lk_probe.phase.duration")}
    count = {(p.attributes["lk_probe.phase"], p.attributes["lk_probe.outcome"]): p.value
             for p in _points("lk_probe.phase.outcome")}
    return hist, count


def test_phase_duration_histogram_and_outcome_counter(capspans):
    # cumulative over the session: compare before and after
    h0, c0 = _snapshot()
    rec = Recorder(None)
    for i, err in enumerate((None, None, "timeout")):
        rec.start("rtc.signal", i)
        rec.end(i, error_type=err)
    h1, c1 = _snapshot()

    def delta(d1, d0, key, idx=None):
        a, b = d1.get(key, (0, 0.0) if idx is not None else 0), d0.get(key, (0, 0.0) if idx is not None else 0)
        return a[idx] - b[idx] if idx is not None else a - b

    ok, err = ("rtc.signal", "ok"), ("rtc.signal", "error")
    assert delta(h1, h0, ok, 0) == 2 and delta(h1, h0, err, 0) == 1
    assert delta(c1, c0, ok) == 2 and delta(c1, c0, err) == 1
    assert 0 <= delta(h1, h0, ok, 1) < 1.0  # seconds
