"""A text waterfall of spans: one block per trace, the span tree on the left, a time bar on the trace's timeline.

Usage::

    from lk_probe.waterfall import render, print_waterfall
    print_waterfall(receiver.spans())        # colour on a terminal, plain text otherwise
    text = render(spans, width=100)          # always plain text; deterministic for the same spans

Example (plain, ``width=76``)::

    trace 0af7651916cd43dd8448eb211c80319c · 5 spans · 100.0 ms
    rtc.connect      │████████████████████████████████████████████│   100.0 ms
    ├─ rtc.attempt   │██████████████████████                      │    49.0 ms ✗
    │  │ ERROR attempt=1 error.type=TimeoutError
    │  └─ rtc.signal │█████████████████◆                          │    38.0 ms ✗
    │       ERROR 'timed out' signal.path=v1
    │       ◆ +40.0 ms closed code=1006
    └─ rtc.attempt   │                          █████████████████ │    37.0 ms
       │ attempt=2
       └─ rtc.pc     │                              ░░░░░░░░░░░░░░│       open
            pc=subscriber

API:

* ``render(spans, *, width=100, trace_id=None) -> str``: ``spans`` is any iterable of SpanRecords (or a SpanSet);
  ``trace_id`` restricts it to one trace. No line is longer than ``width`` (from 30 up). Each row is followed by
  detail lines for an ERROR status (with ``error.type``, else the status message), a short allowlist of attributes
  (``ATTRIBUTES``, shown without their ``lk_probe.`` prefix) and the span's events (◆ on the bar, time from the
  trace's start). Spans whose parent is missing are shown as roots prefixed with ``…``; spans without an end are
  drawn ``░`` to the trace's end.
* ``print_waterfall(spans, file=None, *, width=None, trace_id=None, color=None)``: writes it; with colour (rich,
  the ``cli`` extra) when ``file`` (default stdout) is a terminal or ``color=True``; plain text without rich.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from lk_probe.spans import SpanRecord, SpanSet

__all__ = ["ATTRIBUTES", "render", "print_waterfall"]

ATTRIBUTES = (
    "warm",
    "attempt",
    "lk_probe.signal.path",
    "error.type",
    "outcome",
    "lk_probe.pc",
    "lk_probe.inferred",
)
_MAX_EVENTS = 5

Segment = tuple[str, str]  # (text, rich style)
Line = list[Segment]


def _ms(ns: int) -> str:
    return f"{ns / 1e9:.2f} s" if ns >= 10_000_000_000 else f"{ns / 1e6:.1f} ms"


def _value(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)


def _shown_attributes(span: SpanRecord) -> list[str]:
    out = []
    for key in ATTRIBUTES:
        for k in (key, "lk_probe." + key):
            if k in span.attributes:
                out.append(f"{k.removeprefix('lk_probe.')}={_value(span.attributes[k])}")
                break
    return out


def _lines(spans: SpanSet, width: int) -> list[Line]:
    if not spans:
        return [[("(no spans)", "dim")]]
    out: list[Line] = []
    for trace_id, trace in spans.traces().items():
        if out:
            out.append([])
        t0 = trace[0].start_ns
        t_end = max(
            max(s.end_ns if s.end_ns is not None else s.start_ns for s in trace),
            max((e.t_ns for s in trace for e in s.events), default=t0),
        )
        total = max(t_end - t0, 1)
        n = len(trace)
        out.append([(f"trace {trace_id} · {n} span{'s' if n != 1 else ''} · {_ms(t_end - t0)}", "bold")])

        # flatten the tree: (span, label prefix, detail prefix)
        rows: list[tuple[SpanRecord, str, str]] = []

        def walk(span: SpanRecord, lead: str, connector: str, cont: str) -> None:
            kids = trace.children(span)
            rows.append((span, lead + connector, lead + cont + ("│ " if kids else "  ")))
            for i, kid in enumerate(kids):
                last = i == len(kids) - 1
                walk(kid, lead + cont, "└─ " if last else "├─ ", "   " if last else "│  ")

        for root in trace.roots():
            walk(root, "", "… " if root.parent_id else "", "  " if root.parent_id else "")

        labels = [prefix + s.name for s, prefix, _ in rows]
        lw = min(max(len(label) for label in labels), max(12, width * 2 // 5))
        bw = max(10, width - lw - 16)  # 16: the frame, the duration and the ✗
        lw = max(4, min(lw, width - 16 - bw))  # narrow widths cut the names, not the bar

        def col(t: int) -> int:
            return min(bw - 1, (t - t0) * bw // total)

        for (span, prefix, detail), label in zip(rows, labels):
            if len(label) > lw:
                label = label[: lw - 1] + "…"
            start = col(span.start_ns)
            if span.end_ns is None:
                cells = [" "] * start + ["░"] * (bw - start)
            else:
                end = max(start + 1, min(bw, -(-(span.end_ns - t0) * bw // total)))
                cells = [" "] * start + ["█"] * (end - start) + [" "] * (bw - end)
            for ev in span.events:
                cells[col(ev.t_ns)] = "◆"
            bar_style = "red" if span.error else "cyan"
            dur = "open" if span.end_ns is None else _ms(span.end_ns - span.start_ns)
            line: Line = [(f"{label:<{lw}} ", "bold red" if span.error else "")]
            line.append(("│", "dim"))
            for ch in cells:  # runs of one style; the event markers stand out
                style = "yellow" if ch == "◆" else bar_style
                if line[-1][1] == style and line[-1][0] != "│":
                    line[-1] = (line[-1][0] + ch, style)
                else:
                    line.append((ch, style))
            line += [("│", "dim"), (f" {dur:>10}", "dim")]
            if span.error:
                line.append((" ✗", "bold red"))
            out.append(line)

            details: list[Line] = []
            attrs = _shown_attributes(span)
            if span.error:
                err: Line = [("ERROR", "bold red")]
                if "error.type" not in span.attributes and span.status_message:
                    err.append((f" {span.status_message[:60]!r}", "red"))
                details.append(err + [(" " + " ".join(attrs), "") if attrs else ("", "")])
            elif attrs:
                details.append([(" ".join(attrs), "")])
            for ev in span.events[:_MAX_EVENTS]:
                ev_attrs = " ".join(f"{k}={_value(v)}" for k, v in sorted(ev.attributes.items()))
                details.append([("◆", "yellow"), (f" +{_ms(ev.t_ns - t0)} {ev.name} {ev_attrs}".rstrip(), "dim")])
            if len(span.events) > _MAX_EVENTS:
                details.append([(f"… {len(span.events) - _MAX_EVENTS} more events", "dim")])
            for d in details:
                out.append([(detail, "dim"), *d])
    return out


def _truncate(line: Line, width: int) -> Line:
    out: Line = []
    room = width
    for text, style in line:
        if len(text) > room:
            out.append((text[: max(room - 1, 0)] + "…", style))
            break
        out.append((text, style))
        room -= len(text)
    return out


def render(spans: Iterable[SpanRecord] | SpanSet, *, width: int = 100, trace_id: str | None = None) -> str:
    """The waterfall as plain text (no trailing spaces, ends with a newline)."""
    return "".join(_plain(line) + "\n" for line in _build(spans, width, trace_id))


def _build(spans: Iterable[SpanRecord] | SpanSet, width: int, trace_id: str | None) -> list[Line]:
    spans = spans if isinstance(spans, SpanSet) else SpanSet(spans)
    if trace_id is not None:
        spans = spans.trace(trace_id)
    lines = _lines(spans, width)
    return [_truncate(line, width) for line in lines]  # span rows fit already; long detail lines are cut


def _plain(line: Line) -> str:
    return "".join(t for t, _ in line).rstrip()


def print_waterfall(
    spans: Iterable[SpanRecord] | SpanSet,
    file: IO[str] | None = None,
    *,
    width: int | None = None,
    trace_id: str | None = None,
    color: bool | None = None,
) -> None:
    """Print the waterfall; rich colour on a terminal (or with ``color=True``), plain text otherwise."""
    file = file if file is not None else sys.stdout
    tty = bool(getattr(file, "isatty", lambda: False)())
    color = tty if color is None else color
    if color:
        try:
            from rich.console import Console
            from rich.text import Text
        except ImportError:  # the cli extra is not installed: plain text
            color = False
    if not color:
        file.write(render(spans, width=width or 100, trace_id=trace_id))
        return
    console = Console(file=file, force_terminal=True, highlight=False)
    for line in _build(spans, width or (console.width if tty else 100), trace_id):
        text = Text()
        for t, style in line:
            text.append(t, style=style or None)
        text.rstrip()
        console.print(text, soft_wrap=True)
