"""lk_probe: OpenTelemetry spans for every phase of a LiveKit agent's life.

Usage, at the top of the agent's entrypoint file::

    import lk_probe
    lk_probe.install()

That instruments the livekit-agents worker (job receipt → availability → assignment → launch → process exit), every
job process (prewarm, ctx.connect, one trace per job shared with livekit-agents' own spans) and ``livekit.rtc.Room``
(the Rust engine's connect phases and reconnect episodes). Spans go to the provider you pass, else the global SDK
provider, else one built from the standard ``OTEL_*`` variables. ``uninstall()`` restores everything.

``opentelemetry-instrument`` picks up :class:`LiveKitInstrumentor` through the ``opentelemetry_instrumentor``
entry point (name ``livekit``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Collection

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from .version import __version__

log = logging.getLogger("lk_probe")
_lock = threading.RLock()

__all__ = ["LiveKitInstrumentor", "install", "uninstall", "flush", "installed", "watch_dispatch", "__version__"]


class LiveKitInstrumentor(BaseInstrumentor):
    """OpenTelemetry-contrib style instrumentor behind :func:`install` / :func:`uninstall`."""

    def instrumentation_dependencies(self) -> Collection[str]:
        """The supported range of each instrumented distribution installed here (all of them when none is).

        OpenTelemetry's check requires every entry, while lk_probe instruments whichever is present: listing only the
        installed ones lets ``LiveKitInstrumentor().instrument()`` run in an environment without livekit-agents.
        """
        from .package import SUPPORTED, _instruments_any

        installed = _installed_versions()
        return tuple(spec for dist, spec in zip(SUPPORTED, _instruments_any) if dist in installed) or _instruments_any

    def _instrument(self, **kwargs: Any) -> None:
        from . import _config, _provider, _recorder
        from ._errors import guard

        provider = kwargs.pop("tracer_provider", None)
        kwargs.pop("skip_dep_check", None)
        options = _config.resolve(**kwargs)
        if not options.enabled or _config.otel_disabled() or _config.disabled_by_otel_instrumentations():
            log.info("lk_probe: disabled by configuration; nothing is instrumented")
            return
        _provider.configure(provider, options)
        _recorder.configure(stall_records=options.stall_records)
        _check_versions()
        opts = {k: v for k, v in kwargs.items()}
        # a part whose module is not installed is skipped without a word (a dispatching backend has no worker)
        agents = _importable("livekit.agents")
        if options.worker and agents:
            with guard("install.worker"):
                from ._patches import worker

                worker.instrument()
        if options.job_process and agents:
            with guard("install.job"):
                from ._patches import job

                job.instrument(opts, install)
        if options.rtc and _importable("livekit.rtc"):
            with guard("install.room"):
                from ._patches import room

                room.instrument()
        if options.job_process and options.media and agents:
            with guard("install.media"):  # AgentSession.start (the room's media phases come with Room.connect)
                from ._patches import media

                media.instrument()
        if options.api and _importable("livekit.api"):
            with guard("install.api"):
                from ._patches import api

                api.instrument()

    def _uninstrument(self, **kwargs: Any) -> None:
        from . import _patching, _provider
        from ._errors import guard

        with guard("uninstall.room"):
            from ._patches import room

            room.uninstrument()
        _patching.unwrap_all()
        from . import _recorder

        with guard("uninstall.recorder"):
            _recorder.shutdown()
        with guard("uninstall.state"):
            from ._patches import job, worker

            worker.reset()
            job.reset()
        _provider.reset()


def _installed_versions() -> dict[str, str]:
    """Installed version of each distribution lk_probe instruments (:data:`lk_probe.package.SUPPORTED`)."""
    from importlib.metadata import PackageNotFoundError, version

    from .package import SUPPORTED

    found: dict[str, str] = {}
    for dist in SUPPORTED:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


def _check_versions() -> None:
    """One warning for each instrumented distribution installed outside its supported range."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion

    from ._errors import warn_once
    from .package import SUPPORTED

    for dist, v in _installed_versions().items():
        try:
            supported = SpecifierSet(SUPPORTED[dist]).contains(v, prereleases=True)
        except (InvalidSpecifier, InvalidVersion):
            continue
        if not supported:
            warn_once(f"version:{dist}", "lk_probe: %s %s is outside the supported range %s; instrumenting what "
                      "still applies", dist, v, SUPPORTED[dist])


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (only its parent package)."""
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install(tracer_provider: Any = None, **options: Any) -> None:
    """Instrument the worker, the job processes and ``livekit.rtc.Room``. Idempotent; never raises at run time.

    Args:
        tracer_provider: where spans go. Default: the global SDK provider if set, else one built from ``OTEL_*``.
        **options: see the README's option table (each also has an ``LK_PROBE_*`` environment variable).
    """
    from ._config import resolve

    resolve(**options)  # unknown options are a programming error: TypeError now, not a silent no-op
    with _lock:
        inst = LiveKitInstrumentor()
        if inst.is_instrumented_by_opentelemetry:
            return
        inst.instrument(tracer_provider=tracer_provider, skip_dep_check=True, **options)


def uninstall() -> None:
    """Undo :func:`install`: every patched target is restored. Idempotent."""
    with _lock:
        inst = LiveKitInstrumentor()
        if inst.is_instrumented_by_opentelemetry:
            inst.uninstrument()


def installed() -> bool:
    return LiveKitInstrumentor().is_instrumented_by_opentelemetry


def watch_dispatch(room: str, dispatch_id: str | None = None, *, agent_name: str | None = None,
                   timeout: float = 30.0, url: str | None = None, api_key: str | None = None,
                   api_secret: str | None = None, started_at_ns: int | None = None) -> Any:
    """Follow a dispatch in the background until its agent is in the room, for at most ``timeout`` seconds.

    Returns at once with an ``asyncio.Task`` (await it for a ``WatchResult``: ``.outcome`` is joined, never_joined,
    state_mismatch, failed, room_gone, deleted, unreachable or api_error), or None without a running loop or without
    the livekit-api package (one warning says which). Never
    raises; the task never raises either and ends within its bound. Without ``dispatch_id`` it follows the newest
    dispatch of ``agent_name`` (any agent when None) in ``room``. ``url`` / ``api_key`` / ``api_secret`` default to
    ``LIVEKIT_URL`` / ``LIVEKIT_API_KEY`` / ``LIVEKIT_API_SECRET``; ``started_at_ns`` (default: now) is when the
    dispatch was asked for, the start of the ``dispatch.wait`` span and of the bound.
    """
    from ._errors import guard, warn_once

    if not _importable("livekit.api"):
        warn_once("watch:no-livekit-api", "lk_probe: watch_dispatch() needs the livekit-api package (pip install "
                  "livekit-api); not watching")
        return None
    with guard("watch_dispatch"):
        from ._watch import watch_dispatch as start

        return start(room, dispatch_id, agent_name=agent_name, timeout=timeout, url=url, api_key=api_key,
                     api_secret=api_secret, started_at_ns=started_at_ns)
    return None


def flush(timeout: float = 5.0) -> bool:
    """Export what lk_probe has recorded so far, waiting at most ``timeout`` seconds."""
    from . import _provider

    return _provider.flush(timeout)
