"""Replay a captured or transcribed record sequence (``tests/data/records/*.jsonl``) into a fresh machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lk_probe._rust.machine import EngineMachine
from lk_probe._rust.records import parse
from lk_probe._sink import ListSink

DATA = Path(__file__).resolve().parent.parent / "data" / "records"


def load(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = (DATA / name).read_text().splitlines()
    rows = [json.loads(x) for x in lines if x.strip()]
    return rows[0], rows[1:]


def replay_rows(meta: dict[str, Any], rows: list[dict[str, Any]], sink: Any = None,
                state: str | None = None) -> tuple[Any, EngineMachine]:
    """Feed captured rows (records, room events, connect calls) into a fresh machine with ``sink`` (a ListSink
    unless given: a Recorder makes real spans), starting in ``state`` if given (``connected`` for a capture that
    begins after the connect)."""
    sink = ListSink() if sink is None else sink
    m = EngineMachine(sink, version=meta["livekit"])
    if state is not None:
        m.state = state
    for r in rows:
        k = r["kind"]
        if k == "record":
            m.record(parse(r["level"], r["target"], r["line"], r["module_path"], r["message"]), r["t"])
        elif k == "room_event":
            m.room_event(r["name"], r["t"], **r["data"])
        elif k == "connect_started":
            m.connect_started(r["t"], r["url"])
        elif k == "connect_finished":
            m.connect_finished(r["t"], r["error"])
        elif k == "closed":
            m.closed(r["t"])
    return sink, m


def replay(name: str) -> tuple[ListSink, EngineMachine, dict[str, Any]]:
    meta, rows = load(name)
    sink, m = replay_rows(meta, rows)
    return sink, m, meta


def tree(sink: ListSink, t0: int | None = None) -> list[tuple]:
    """(phase, parent phase, start ms, end ms | None, error_type, attributes at start+end) per started phase."""
    phase_of: dict[Any, str] = {}
    rows: dict[Any, list[Any]] = {}
    order: list[Any] = []
    base = t0 if t0 is not None else (sink.calls[0].t if sink.calls else 0)
    for c in sink.calls:
        if c.op == "start":
            phase_of[c.key] = c.phase
            rows[c.key] = [c.phase, phase_of.get(c.parent), (c.t - base) / 1e6, None, None, dict(c.attributes)]
            order.append(c.key)
        elif c.op == "attributes" and c.key in rows:
            rows[c.key][5].update(c.attributes)
        elif c.op == "end" and c.key in rows:
            r = rows[c.key]
            r[3], r[4] = (c.t - base) / 1e6, c.error_type
            r[5].update(c.attributes)
    return [tuple(rows[k]) for k in order]


def normalized(calls: list[dict[str, Any]]) -> list[tuple]:
    return [(c["op"], c["key"], c["t"], c["phase"], c["parent"], c["name"], c["error_type"], c["error_message"],
             json.dumps(c["attributes"], sort_keys=True)) for c in calls]


def calls_of(sink: ListSink) -> list[dict[str, Any]]:
    keys: dict[Any, int] = {}

    def k(key: Any) -> Any:
        return None if key is None else keys.setdefault(key, len(keys))

    return [{"op": c.op, "key": k(c.key), "t": c.t, "phase": c.phase, "parent": k(c.parent), "name": c.name,
             "error_type": c.error_type, "error_message": c.error_message,
             "attributes": json.loads(json.dumps(c.attributes))} for c in sink.calls]
