"""Guards: an exception inside lk_probe is logged once per site and swallowed, never raised into the agent.

In strict mode (the pytest plugin, or ``LK_PROBE_STRICT=1`` in a subprocess under test) every swallowed error is
also kept in :data:`errors` and logged at ERROR with the marker ``lk_probe internal error``, so tests fail on it.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Any, Callable, TypeVar

log = logging.getLogger("lk_probe")

F = TypeVar("F", bound=Callable[..., Any])

MARKER = "lk_probe internal error"
errors: list[tuple[str, BaseException]] = []
_seen: set[str] = set()
_warned: set[str] = set()
_lock = threading.Lock()


class InjectedFault(RuntimeError):
    """Raised inside lk_probe's guarded blocks when LK_PROBE_INJECT_FAULTS=1 (tests prove nothing escapes)."""


_faults = False  # LK_PROBE_INJECT_FAULTS=1, read at import and at install() (not at every guard: ~100 per job)


def read_environment() -> None:
    global _faults
    _faults = os.environ.get("LK_PROBE_INJECT_FAULTS") == "1"


read_environment()


def _inject() -> None:
    if _faults:
        raise InjectedFault("fault injected inside lk_probe")


def strict() -> bool:
    return os.environ.get("LK_PROBE_STRICT", "").strip().lower() in ("1", "true", "yes")


def report(where: str, exc: BaseException) -> None:
    with _lock:
        first = where not in _seen
        _seen.add(where)
        if strict() and not isinstance(exc, InjectedFault):
            errors.append((where, exc))
    if strict() and not isinstance(exc, InjectedFault):
        log.error("%s in %s: %r", MARKER, where, exc, exc_info=exc)
    elif first:
        log.warning("%s in %s (lk_probe keeps going without this part; the agent is not affected): %r",
                    MARKER, where, exc, exc_info=exc)


class guard:
    """``with guard("worker.availability"): ...`` — lk_probe's own bookkeeping, never the user's call.

    An exception escaping the block is reported (once per site) and swallowed. With LK_PROBE_INJECT_FAULTS=1 (in the
    environment when lk_probe is imported or installed) every block that completes raises an InjectedFault at its
    end instead, to prove that nothing escapes.
    """

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> bool:
        if typ is None:
            try:
                _inject()
            except InjectedFault as e:
                report(self.where, e)
            return False
        if issubclass(typ, Exception):
            report(self.where, exc)
            return True
        return False  # KeyboardInterrupt, SystemExit, CancelledError: not ours to swallow


def guarded(where: str, default: Any = None) -> Callable[[F], F]:
    """Decorator form of :func:`guard` for lk_probe-internal functions; returns ``default`` on error."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                _inject()
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                report(where, exc)
                return default

        return inner  # type: ignore[return-value]

    return deco


def warn_once(key: str, message: str, *args: Any) -> None:
    """One clear warning per key and process (unsupported version, bad configuration, exporter down, ...)."""
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message, *args)


def reset_for_tests() -> None:
    with _lock:
        errors.clear()
        _seen.clear()
        _warned.clear()
