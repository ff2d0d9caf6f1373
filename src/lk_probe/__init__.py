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
import re
import sys
import threading
from typing import Any, Collection

# imported with lk_probe, although only LiveKitInstrumentor needs it: measured, a job process forked from a forkserver
# that had not imported it spent ~50 ms more CPU before its connect (it is then imported in each child instead)
import opentelemetry.instrumentation.instrumentor  # noqa: F401,E402

from .version import __version__

log = logging.getLogger("lk_probe")
_lock = threading.RLock()
_state = {"installed": False}  # whichever of install() and LiveKitInstrumentor installed it

__all__ = ["LiveKitInstrumentor", "install", "uninstall", "flush", "installed", "watch_dispatch", "__version__"]


def _instrument(**kwargs: Any) -> None:
    from . import _config, _errors, _provider, _recorder
    from ._errors import guard

    _errors.read_environment()
    provider = kwargs.pop("tracer_provider", None)
    kwargs.pop("skip_dep_check", None)
    options = _config.resolve(**kwargs)
    if not options.enabled or _config.otel_disabled() or _config.disabled_by_otel_instrumentations():
        log.info("lk_probe: disabled by configuration; nothing is instrumented")
        return
    _provider.configure(provider, options)
    _recorder.configure(stall_records=options.stall_records)
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
    _check_versions()  # after the patches, which imported the modules whose __version__ it reads


def _uninstrument() -> None:
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


def _install(kwargs: dict[str, Any]) -> None:
    if not _state["installed"]:
        _instrument(**kwargs)
        _state["installed"] = True


def _uninstall() -> None:
    if _state["installed"]:
        _uninstrument()
        _state["installed"] = False


def _instrumentor_class() -> type:
    """:class:`LiveKitInstrumentor`, defined on first use: ``opentelemetry.instrumentation`` (and the ``packaging``
    it imports) would be most of what importing lk_probe costs a job process, and only ``opentelemetry-instrument``
    needs it."""
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

    class LiveKitInstrumentor(BaseInstrumentor):  # type: ignore[misc]
        """OpenTelemetry-contrib style instrumentor behind :func:`install` / :func:`uninstall`; both keep one state,
        whether lk_probe is installed, whichever of them installed it."""

        @property
        def _is_instrumented_by_opentelemetry(self) -> bool:  # type: ignore[override]
            return _state["installed"]

        @_is_instrumented_by_opentelemetry.setter
        def _is_instrumented_by_opentelemetry(self, value: bool) -> None:
            pass  # kept by _install / _uninstall

        def instrumentation_dependencies(self) -> Collection[str]:
            """The supported range of each instrumented distribution installed here (all of them when none is).

            OpenTelemetry's check requires every entry, while lk_probe instruments whichever is present: listing only
            the installed ones lets ``LiveKitInstrumentor().instrument()`` run in an environment without
            livekit-agents.
            """
            from .package import SUPPORTED, _instruments_any

            installed = _installed_versions()
            return (tuple(spec for dist, spec in zip(SUPPORTED, _instruments_any) if dist in installed)
                    or _instruments_any)

        def _instrument(self, **kwargs: Any) -> None:
            with _lock:
                _install(kwargs)

        def _uninstrument(self, **kwargs: Any) -> None:
            with _lock:
                _uninstall()

    LiveKitInstrumentor.__module__, LiveKitInstrumentor.__qualname__ = __name__, "LiveKitInstrumentor"
    return LiveKitInstrumentor


def __getattr__(name: str) -> Any:
    if name == "LiveKitInstrumentor":
        cls = globals()["LiveKitInstrumentor"] = _instrumentor_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: distribution -> the module whose ``__version__`` says which version of it is in use
_VERSION_MODULES = {"livekit-agents": "livekit.agents", "livekit": "livekit.rtc", "livekit-api": "livekit.api"}


def _installed_versions(dists: Collection[str] | None = None) -> dict[str, str]:
    """Installed version of each distribution lk_probe instruments (:data:`lk_probe.package.SUPPORTED`), or of
    ``dists``, from the environment's package metadata."""
    from importlib.metadata import PackageNotFoundError, version

    from .package import SUPPORTED

    found: dict[str, str] = {}
    for dist in SUPPORTED if dists is None else dists:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


def _versions_in_use() -> dict[str, str]:
    """The version of each instrumented distribution: its imported module's ``__version__`` (the patches imported
    them), else the package metadata, which takes milliseconds to read (it scans the environment)."""
    found: dict[str, str] = {}
    for dist, module in _VERSION_MODULES.items():
        v = getattr(sys.modules.get(module), "__version__", None)
        if isinstance(v, str):
            found[dist] = v
    missing = [dist for dist in _VERSION_MODULES if dist not in found]
    if missing:
        found.update(_installed_versions(missing))
    return found


_PLAIN_RELEASE = re.compile(r"\d+(?:\.\d+)*")
_PLAIN_CLAUSE = re.compile(r"\s*(>=|<)\s*(\d+(?:\.\d+)*)\s*")


def _release(v: str) -> tuple[int, ...]:
    parts = [int(x) for x in v.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _supported(v: str, spec: str) -> bool | None:
    """Whether version ``v`` is inside the PEP 440 specifier ``spec`` (pre-releases included); None when either does
    not parse. A plain release against ``>=`` / ``<`` clauses is compared as numbers; anything else goes through
    ``packaging`` (an import that costs a job process milliseconds)."""
    clauses = [_PLAIN_CLAUSE.fullmatch(clause) for clause in spec.split(",")]
    if _PLAIN_RELEASE.fullmatch(v) and all(clauses):
        have = _release(v)
        return all(have >= _release(m[2]) if m[1] == ">=" else have < _release(m[2]) for m in clauses if m)
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion

    try:
        return SpecifierSet(spec).contains(v, prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return None


def _check_versions() -> None:
    """One warning for each instrumented distribution in use outside its supported range."""
    from ._errors import warn_once
    from .package import SUPPORTED

    for dist, v in _versions_in_use().items():
        if _supported(v, SUPPORTED[dist]) is False:
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
        _install({"tracer_provider": tracer_provider, **options})


def uninstall() -> None:
    """Undo :func:`install`: every patched target is restored. Idempotent."""
    with _lock:
        _uninstall()


def installed() -> bool:
    return _state["installed"]


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
