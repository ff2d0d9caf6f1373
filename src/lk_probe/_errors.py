"""Guards: an exception inside lk_probe is logged once per site and swallowed, never raised into the agent.

In strict mode (the pytest plugin, or ``LK_PROBE_STRICT=1`` in a subprocess under test) every swallowed error is
also kept in :data:`errors` and logged at ERROR with the marker ``lk_probe internal error``, so tests fail on it.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

log = logging.getLogger("lk_probe")

F = TypeVar("F", bound=Callable[..., Any])

MARKER = "lk_probe internal error"
errors: list[tuple[str, BaseException]] = []
_seen: set[str] = set()
_warned: set[str] = set()
_lock = threading.Lock()


def strict() -> bool:
    return os.environ.get("LK_PROBE_STRICT", "").strip().lower() in ("1", "true", "yes")


def report(where: str, exc: BaseException) -> None:
    with _lock:
        first = where not in _seen
        _seen.add(where)
        if strict():
            errors.append((where, exc))
    if strict():
        log.error("%s in %s: %r", MARKER, where, exc, exc_info=exc)
    elif first:
        log.warning("%s in %s (lk_probe keeps going without this part; the agent is not affected): %r",
                    MARKER, where, exc, exc_info=exc)


@contextmanager
def guard(where: str) -> Iterator[None]:
    """``with guard("worker.availability"): ...`` — lk_probe's own bookkeeping, never the user's call."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - that is the point
        report(where, exc)


def guarded(where: str, default: Any = None) -> Callable[[F], F]:
    """Decorator form of :func:`guard` for lk_probe-internal functions; returns ``default`` on error."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
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
