"""The contract between what observes a phase (worker patches, the Rust record bridge) and what turns it into spans.

Observers call a :class:`PhaseSink`; the production sink (``lk_probe._recorder.Recorder``) makes OTel spans from
the catalogue, the test sink (:class:`ListSink`) just records the calls. Times are nanoseconds since the epoch
(``time.time_ns()``), the unit OTel uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Protocol


class PhaseSink(Protocol):
    def start(self, phase: str, key: Hashable, *, t: int, parent: Hashable | None = None,
              attributes: dict[str, Any] | None = None, context: Any = None) -> Any:
        """A phase instance began. ``key`` names the instance (unique while it is open); ``parent`` is the key of
        the open instance it belongs under, or None for the sink's default parent (the connect span or the room's
        context). ``context``, a handle from :meth:`context`, places it under an instance that has ended since (a
        phase learnt from records that arrived late); it wins over ``parent``."""

    def end(self, key: Hashable, *, t: int, error_type: str | None = None, error_message: str | None = None,
            attributes: dict[str, Any] | None = None) -> None:
        """The phase instance ``key`` ended; with ``error_type`` it failed. Unknown keys are ignored."""

    def event(self, key: Hashable | None, name: str, *, t: int, attributes: dict[str, Any] | None = None) -> None:
        """Something happened during ``key`` (or, with None, during whatever phase is innermost)."""

    def set_attributes(self, key: Hashable, attributes: dict[str, Any]) -> None:
        """Optional: refine the attributes of the open instance ``key`` (e.g. a reason learnt after it started)."""

    def context(self, key: Hashable) -> Any:
        """Optional: a handle on the open instance ``key`` that still parents phases (``start(context=...)``) after
        ``key`` has ended; None when ``key`` is not open."""


@dataclass
class Call:
    op: str  # "start" | "end" | "event"
    key: Hashable
    t: int
    phase: str | None = None
    parent: Hashable | None = None
    name: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


class ListSink:
    """A sink that records calls, for tests of observers."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def start(self, phase, key, *, t, parent=None, attributes=None, context=None):
        # the handle from context() is the parent's key itself: ``parent`` already names it
        self.calls.append(Call("start", key, t, phase=phase, parent=parent, attributes=dict(attributes or {})))

    def end(self, key, *, t, error_type=None, error_message=None, attributes=None):
        self.calls.append(Call("end", key, t, error_type=error_type, error_message=error_message,
                               attributes=dict(attributes or {})))

    def event(self, key, name, *, t, attributes=None):
        self.calls.append(Call("event", key, t, name=name, attributes=dict(attributes or {})))

    def set_attributes(self, key, attributes):
        self.calls.append(Call("attributes", key, 0, attributes=dict(attributes or {})))

    def context(self, key):
        return key

    # helpers for assertions
    def phases(self) -> list[str]:
        return [c.phase for c in self.calls if c.op == "start"]
