"""Ties the Rust engine's watchdog lines to livekit-agents' ``event_loop_blocked`` spans (agents 1.8+).

The Rust SDK logs ``signal_event taking too much time: Answer(..)`` (and the rtc/session/engine/FFI variants) when
one of its handlers has run for 10 s. livekit-agents' loop monitor emits a back-dated ``event_loop_blocked`` span
when the job's asyncio loop was blocked. Either can come first. When the handler's 10 s window and the block
overlap, lk_probe says so on both sides:

* a watchdog event recorded after the block carries ``lk_probe.loop_blocked.span_id`` / ``.duration_s``;
* an ``event_loop_blocked`` span started after the watchdog line (it is created when the block ends) carries
  ``lk_probe.rust_watchdog.task`` / ``.message_kind`` / ``.span_id`` (the lk_probe span holding the event) /
  ``.count``.

Overlap, not cause: a blocked Python loop does not stall the Rust handler by itself, but both at once is exactly
what the last user report showed, and a reader of the trace should not have to line them up by hand.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from . import _catalogue as c
from ._errors import guard

SPAN_NAME = "event_loop_blocked"  # livekit-agents' telemetry/loop_monitor.py
WATCHDOG_EVENT = c.EV_WATCHDOG  # the engine machine's event for a watchdog line
HANDLER_WINDOW_NS = 10_000_000_000  # the Rust watchdogs fire when a handler has run this long
_KEEP = 32

_lock = threading.Lock()
_blocks: deque[tuple[int, int, str]] = deque(maxlen=_KEEP)  # (start, end, span id)
_watchdogs: deque[tuple[int, str, str, str]] = deque(maxlen=_KEEP)  # (time, carrier span id, task, message kind)


def _overlaps(watchdog_t: int, block_start: int, block_end: int) -> bool:
    return block_start <= watchdog_t and block_end >= watchdog_t - HANDLER_WINDOW_NS


def watchdog_seen(t: int, carrier: Any, task: str, kind: str | None) -> dict[str, Any]:
    """Record a watchdog line; return attributes for its event when a block already reported overlaps it."""
    span_id = _span_id(carrier)
    with _lock:
        _watchdogs.append((t, span_id, task, kind or ""))
        hit = next((b for b in reversed(_blocks) if _overlaps(t, b[0], b[1])), None)
    if hit is None:
        return {}
    return {c.LOOP_BLOCKED_SPAN_ID: hit[2], c.LOOP_BLOCKED_DURATION: round((hit[1] - hit[0]) / 1e9, 3)}


def block_started(span: Any) -> None:
    """An ``event_loop_blocked`` span is starting (back-dated; the block has just ended): tie it to watchdog lines."""
    start = span.start_time or time.time_ns()
    end = time.time_ns()
    with _lock:
        _blocks.append((start, end, _span_id(span)))
        hits = [w for w in _watchdogs if _overlaps(w[0], start, end)]
    if hits:
        last = hits[-1]
        span.set_attributes({c.RUST_WATCHDOG_TASK: last[2], c.RUST_WATCHDOG_MESSAGE_KIND: last[3],
                             c.RUST_WATCHDOG_SPAN_ID: last[1], c.RUST_WATCHDOG_COUNT: len(hits)})


def reset() -> None:
    with _lock:
        _blocks.clear()
        _watchdogs.clear()


def _span_id(span: Any) -> str:
    try:
        return format(span.get_span_context().span_id, "016x")
    except Exception:  # noqa: BLE001 - a non-recording stand-in
        return ""


def processor() -> Any:
    from opentelemetry.sdk.trace import SpanProcessor

    class LoopBlockProcessor(SpanProcessor):  # subclass: newer SDKs add hooks (``_on_ending``)
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            if span.name == SPAN_NAME:
                with guard("loopblock.on_start"):
                    block_started(span)

    return LoopBlockProcessor()
