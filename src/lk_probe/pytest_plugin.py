"""lk_probe's pytest plugin (entry point ``pytest11``): inert unless a test uses one of its fixtures.

Fixtures:

* ``capspans`` — like ``caplog`` for spans: installs lk_probe into a fresh in-memory SDK provider for the test and
  yields a :class:`CapSpans`; ``capspans.spans`` is a :class:`lk_probe.spans.SpanSet` of the spans finished so far
  (``capspans.phase("job.assignment").duration < 0.5``). lk_probe runs in strict mode: an error swallowed inside
  lk_probe fails the test.
* ``otlp_receiver`` — a real OTLP/HTTP (+gRPC) receiver on loopback; ``otlp_env`` — the ``OTEL_*`` variables that
  point a subprocess (a real agents worker) at it.
* ``lk_double``, ``agent_worker`` — the LiveKit server double and real worker processes (``lk_probe.testing``).

Option ``--lk-netns`` re-runs the whole session inside a private network namespace (root or user namespaces
needed), where real ICE between the Rust SDK and the double works on loopback addresses only.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterator

import pytest


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("lk_probe", "lk_probe (LiveKit phase tracing)")
    group.addoption("--lk-netns", action="store_true", default=False,
                    help="re-run this pytest session inside a private network namespace (real ICE on loopback)")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "lk_netns: needs the private network namespace (real ICE); skipped outside it")
    if config.getoption("--lk-netns", default=False) and not os.environ.get("LK_PROBE_IN_NETNS"):
        from lk_probe.testing import netns

        if not netns.in_private_netns():
            argv = [sys.executable, "-m", "pytest", *[a for a in config.invocation_params.args if a != "--lk-netns"]]
            netns.reexec_in_netns(argv)


def pytest_runtest_setup(item: Any) -> None:
    if item.get_closest_marker("lk_netns") is not None:
        try:
            from lk_probe.testing import netns
        except ImportError as e:  # pragma: no cover - testing extras missing
            pytest.skip(f"lk_probe.testing is unavailable: {e}")
        if not netns.in_private_netns():
            pytest.skip("needs the private network namespace for real ICE: run pytest with --lk-netns "
                        "(or under `python -m lk_probe.testing.netns -- pytest ...`)")


class CapSpans:
    """What ``capspans`` yields."""

    def __init__(self, exporter: Any, provider: Any) -> None:
        self.exporter = exporter
        self.provider = provider

    @property
    def spans(self):
        from lk_probe.spans import SpanRecord, SpanSet

        self.provider.force_flush()
        return SpanSet([SpanRecord.from_readable(s) for s in self.exporter.get_finished_spans()])

    def phase(self, name: str):
        return self.spans.phase(name)

    def phases(self, name: str):
        return self.spans.phases(name)

    def clear(self) -> None:
        self.exporter.clear()


@pytest.fixture
def capspans(monkeypatch: pytest.MonkeyPatch) -> Iterator[CapSpans]:
    """Capture lk_probe's spans (and livekit-agents' own) in memory for this test; strict mode on."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import lk_probe
    from lk_probe import _errors

    monkeypatch.setenv("LK_PROBE_STRICT", "1")
    _errors.reset_for_tests()
    was_installed = lk_probe.installed()
    if was_installed:
        lk_probe.uninstall()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lk_probe.install(tracer_provider=provider)
    try:
        yield CapSpans(exporter, provider)
    finally:
        lk_probe.uninstall()
        provider.shutdown()
        errors = list(_errors.errors)
        _errors.reset_for_tests()
    if errors:
        lines = "\n".join(f"  {where}: {exc!r}" for where, exc in errors)
        pytest.fail(f"lk_probe swallowed {len(errors)} internal error(s) during the test:\n{lines}")


@pytest.fixture
def otlp_receiver() -> Iterator[Any]:
    """A real OTLP receiver (HTTP and gRPC) on 127.0.0.1, stopped after the test."""
    from lk_probe.testing.otlp import OtlpReceiver

    with OtlpReceiver(grpc_port=0, lifetime=900) as rx:
        yield rx


@pytest.fixture
def otlp_env(otlp_receiver: Any) -> dict[str, str]:
    """Environment for a subprocess that should export to ``otlp_receiver`` over OTLP/HTTP."""
    return {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp_receiver.http_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "LK_PROBE_STRICT": "1",
    }


try:  # the LiveKit double's fixtures, when the testing extras are installed
    from lk_probe.testing.fixtures import agent_worker, lk_double  # noqa: F401
except ImportError:  # pragma: no cover
    pass
