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
needed), where real ICE between the Rust SDK and the double works on loopback addresses only; marker ``lk_netns``
skips a test outside it.

Registering the plugin imports only pytest: the server double, the OTLP receiver and the network namespace code
(``lk_probe.testing``, the ``testing`` extra) are imported when a fixture, the marker or the option first needs them,
and a missing extra fails that test with one message that names it.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable, Iterator

import pytest

EXTRA = "pip install 'lk-probe[testing]'"


def _testing(module: str, needed_by: str) -> Any:
    """``lk_probe.testing.<module>``, imported on first use; a missing testing extra fails with one clear message."""
    try:
        return importlib.import_module(f"lk_probe.testing.{module}")
    except ModuleNotFoundError as e:
        if (e.name or "lk_probe").split(".")[0] == "lk_probe":
            raise  # a bug inside lk_probe, not a missing extra
        missing = e.name
    pytest.fail(f"{needed_by} needs lk_probe's testing extra ({missing} is not installed): {EXTRA}", pytrace=False)


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("lk_probe", "lk_probe (LiveKit phase tracing)")
    group.addoption("--lk-netns", action="store_true", default=False,
                    help="re-run this pytest session inside a private network namespace (real ICE on loopback)")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "lk_netns: needs the private network namespace (real ICE); skipped outside it")
    if config.getoption("--lk-netns", default=False) and not os.environ.get("LK_PROBE_IN_NETNS"):
        try:
            netns = _testing("netns", "--lk-netns")
        except pytest.fail.Exception as e:
            raise pytest.UsageError(str(e)) from None
        if not netns.in_private_netns():
            argv = [sys.executable, "-m", "pytest", *[a for a in config.invocation_params.args if a != "--lk-netns"]]
            netns.reexec_in_netns(argv)


def pytest_runtest_setup(item: Any) -> None:
    if item.get_closest_marker("lk_netns") is not None:
        if not _testing("netns", "the lk_netns marker").in_private_netns():
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
    with _testing("otlp", "the otlp_receiver fixture").OtlpReceiver(grpc_port=0, lifetime=900) as rx:
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


def _double_fixture(name: str) -> Callable[..., Iterator[Any]]:
    """The generator behind ``lk_probe.testing.fixtures.<name>`` (imported now, at the fixture's setup)."""
    fixture = getattr(_testing("fixtures", f"the {name} fixture"), name)
    return getattr(fixture, "__wrapped__", fixture)  # the function pytest's fixture decorator wraps


@pytest.fixture
def lk_double() -> Iterator[Any]:
    """The LiveKit server double on 127.0.0.1 (``lk_probe.testing.fixtures.lk_double``), leak-checked after the test."""
    yield from _double_fixture("lk_double")()


@pytest.fixture
def agent_worker(lk_double: Any) -> Iterator[Any]:
    """Factory starting real agent workers against ``lk_double`` (``lk_probe.testing.fixtures.agent_worker``)."""
    yield from _double_fixture("agent_worker")(lk_double)
