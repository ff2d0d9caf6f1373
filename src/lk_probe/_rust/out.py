"""The sink as the engine machine sees it: every string redacted (once: the Recorder takes the cleaned attributes as
they are), no key ended twice, open phases capped."""

from __future__ import annotations

from typing import Any, Hashable

from .. import _catalogue as c
from .._errors import warn_once
from .._sink import PhaseSink
from .. import _redact as redact

MAX_OPEN = 64


def inferred(src: str) -> dict[str, Any]:
    """The attributes of a phase (or a phase's end) that no record marks: ``src`` says what it was placed from."""
    return {c.INFERRED: True, c.INFERRED_FROM: src}


class Out:
    """Wraps the machine's :class:`~lk_probe._sink.PhaseSink`; ``open`` maps each open key to its phase."""

    def __init__(self, sink: PhaseSink) -> None:
        self.sink = sink
        self.open: dict[Hashable, str] = {}

    def start(self, phase: str, key: Hashable, t: int, attrs: dict[str, Any] | None = None,
              parent: Hashable | None = None, context: Any = None) -> bool:
        if key in self.open:
            return False
        if len(self.open) >= MAX_OPEN:
            warn_once("rust.machine.max_open", "lk_probe: too many open Rust engine phases; dropping new ones")
            return False
        self.open[key] = phase
        attributes = redact.clean_attributes(attrs)
        if context is None:
            self.sink.start(phase, key, t=t, parent=parent, attributes=attributes)
        else:
            self.sink.start(phase, key, t=t, parent=parent, attributes=attributes, context=context)
        return True

    def end(self, key: Hashable | None, t: int, error_type: str | None = None, error_message: str | None = None,
            attrs: dict[str, Any] | None = None) -> None:
        if key is None or self.open.pop(key, None) is None:
            return
        msg = redact.clean(error_message) if error_message else None
        self.sink.end(key, t=t, error_type=error_type, error_message=msg, attributes=redact.clean_attributes(attrs))

    def event(self, key: Hashable | None, name: str, t: int, attrs: dict[str, Any] | None = None) -> None:
        if key is not None and key not in self.open:
            key = None
        self.sink.event(key, name, t=t, attributes=redact.clean_attributes(attrs))

    def context(self, key: Hashable) -> Any:
        """The sink's handle on the open ``key`` for phases placed under it once it has ended (None: no handle)."""
        fn = getattr(self.sink, "context", None)
        return fn(key) if fn is not None and key in self.open else None

    def set_attributes(self, key: Hashable, attrs: dict[str, Any]) -> None:
        """Refine an open phase now (not only at its end), so a process killed meanwhile still reports it."""
        fn = getattr(self.sink, "set_attributes", None)
        if key in self.open and fn is not None:
            fn(key, redact.clean_attributes(attrs))



class Clamped:
    """The :class:`Out` of phases whose records can arrive after the phase holding them ended (a reconnect episode
    whose `reconnected` event outran its records): every time is kept within ``[lo, hi]``, that phase's time, since
    arrival times are later than what such records mark."""

    def __init__(self, out: Out, lo: int, hi: int) -> None:
        self.out, self.lo, self.hi = out, lo, hi

    def _t(self, t: int) -> int:
        return min(max(t, self.lo), self.hi)

    def start(self, phase: str, key: Hashable, t: int, attrs: dict[str, Any] | None = None,
              parent: Hashable | None = None, context: Any = None) -> bool:
        return self.out.start(phase, key, self._t(t), attrs, parent=parent, context=context)

    def end(self, key: Hashable | None, t: int, error_type: str | None = None, error_message: str | None = None,
            attrs: dict[str, Any] | None = None) -> None:
        self.out.end(key, self._t(t), error_type, error_message, attrs)

    def event(self, key: Hashable | None, name: str, t: int, attrs: dict[str, Any] | None = None) -> None:
        self.out.event(key, name, self._t(t), attrs)

    def context(self, key: Hashable) -> Any:
        return self.out.context(key)
