"""What lk_probe instruments and the versions it supports: the one place these ranges are stated.

Laid out as in OpenTelemetry's instrumentation packages. lk_probe instruments whichever of these distributions is
installed, each part on its own (an agent image has all three; a dispatching backend may have only livekit-api), so
they are "any of" requirements: ``_instruments_any`` here and the ``instruments-any`` extra in pyproject.toml, which
``opentelemetry-instrument`` reads before it loads the ``livekit`` entry point (a test keeps the two equal).
:meth:`lk_probe.LiveKitInstrumentor.instrumentation_dependencies` and the version check at install time read them
from here. None of them is a dependency of lk_probe itself.
"""

#: distribution -> the versions lk_probe supports (a PEP 440 specifier)
SUPPORTED: dict[str, str] = {
    "livekit-agents": ">= 1.2, < 1.9",  # the worker process and the job processes
    "livekit": ">= 1.1, < 1.3",  # livekit.rtc.Room and the Rust engine's records
    "livekit-api": ">= 1.0, < 1.3",  # the dispatching side: its livekit.api dispatch and room calls
}

_instruments: tuple[str, ...] = ()
_instruments_any: tuple[str, ...] = tuple(f"{dist} {spec}" for dist, spec in SUPPORTED.items())
_supports_metrics = True
