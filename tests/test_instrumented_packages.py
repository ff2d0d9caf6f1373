"""What lk_probe instruments is checked at install time, not forced on the user: one warning for an installed
version outside the range in lk_probe.package, and a part whose package is missing is skipped without a word."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import types

import pytest
from opentelemetry.instrumentation.dependencies import get_dependency_conflicts
from opentelemetry.sdk.trace import TracerProvider

import lk_probe
from lk_probe import _errors, _patching, package


@pytest.fixture
def versions(monkeypatch):
    """``versions(**{"livekit-agents": "1.9.0"})``: what importlib.metadata and the imported modules report as
    installed (nothing else is)."""
    _errors.reset_for_tests()

    def fake(installed: dict[str, str]) -> None:
        def version(dist: str) -> str:
            if dist not in installed:
                raise importlib.metadata.PackageNotFoundError(dist)
            return installed[dist]

        monkeypatch.setattr(importlib.metadata, "version", version)
        # the check reads an imported module's __version__ first: the same versions there (None: not imported)
        for dist, module in lk_probe._VERSION_MODULES.items():
            monkeypatch.setitem(sys.modules, module,
                                types.SimpleNamespace(__version__=installed[dist]) if dist in installed else None)

    yield lambda **installed: fake(installed)
    _errors.reset_for_tests()


def _lk_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lk_probe" and r.levelno >= logging.WARNING]


def test_a_version_outside_the_range_warns_once_with_the_range_from_package(versions, caplog):
    versions(**{"livekit-agents": "1.9.0", "livekit": "1.1.21"})
    lk_probe._check_versions()
    lk_probe._check_versions()
    assert _lk_warnings(caplog) == [f"lk_probe: livekit-agents 1.9.0 is outside the supported range "
                                    f"{package.SUPPORTED['livekit-agents']}; instrumenting what still applies"]


@pytest.mark.parametrize("installed", [
    {"livekit-agents": "1.8.9", "livekit": "1.2.0", "livekit-api": "1.2.2"},
    {"livekit-agents": "1.2.0", "livekit": "1.1.0", "livekit-api": "1.0.0"},
    {"livekit-agents": "1.8.10rc1"},  # a pre-release inside the range
    {"livekit-api": "1.2.2"},  # a dispatching backend: the others are absent, which is not worth a word
    {},
])
def test_versions_in_range_or_absent_say_nothing(versions, caplog, installed):
    versions(**installed)
    lk_probe._check_versions()
    assert _lk_warnings(caplog) == []


def test_instrumentation_dependencies_are_the_installed_packages_ranges(versions):
    """OpenTelemetry's own check (``LiveKitInstrumentor().instrument()`` without install()) requires every entry."""
    versions(**{"livekit-api": "1.2.2"})
    deps = lk_probe.LiveKitInstrumentor().instrumentation_dependencies()
    assert deps == (f"livekit-api {package.SUPPORTED['livekit-api']}",)
    assert get_dependency_conflicts(deps) is None
    versions()
    assert lk_probe.LiveKitInstrumentor().instrumentation_dependencies() == package._instruments_any


@pytest.mark.parametrize("missing", [
    ("livekit.agents",),
    ("livekit.agents", "livekit.rtc"),  # a dispatching backend: only livekit.api is instrumented
    ("livekit.agents", "livekit.rtc", "livekit.api"),
])
def test_a_part_whose_package_is_missing_is_skipped_quietly(monkeypatch, caplog, missing):
    _errors.reset_for_tests()
    provider = TracerProvider()
    with monkeypatch.context() as hidden:
        for module in missing:
            hidden.setitem(sys.modules, module, None)  # as if not installed
        lk_probe.install(tracer_provider=provider)
    try:
        packages = {module.split(".")[1] for module, _ in _patching.patched()}
        assert packages == {"agents", "rtc", "api"} - {m.split(".")[1] for m in missing}
        assert _lk_warnings(caplog) == [] and _errors.errors == []
    finally:
        lk_probe.uninstall()
        provider.shutdown()


def test_the_version_check_reads_the_imported_module_first(monkeypatch, caplog):
    """The imported module's ``__version__`` is what is in use (and cheaper to read than the package metadata)."""
    import livekit.agents

    _errors.reset_for_tests()
    monkeypatch.setattr(livekit.agents, "__version__", "1.99.0")  # what the installed metadata does not say
    lk_probe._check_versions()
    assert _lk_warnings(caplog) == [f"lk_probe: livekit-agents 1.99.0 is outside the supported range "
                                    f"{package.SUPPORTED['livekit-agents']}; instrumenting what still applies"]
    _errors.reset_for_tests()


@pytest.mark.parametrize("v", ["1.8.9", "1.9.0", "1.9", "1.2", "1.1.99", "1.8.10rc1", "1.9.0rc1", "1.2.0rc1",
                               "1.10.0", "1.8.9.post1", "2", "not-a-version"])
@pytest.mark.parametrize("spec", list(package.SUPPORTED.values()) + [">= 1.2, != 1.5.0"])
def test_the_range_check_agrees_with_packaging(v, spec):
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion

    try:
        expected = SpecifierSet(spec).contains(v, prereleases=True)
    except InvalidVersion:
        expected = None
    assert lk_probe._supported(v, spec) is expected
