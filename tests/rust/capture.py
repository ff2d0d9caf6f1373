"""Capture a REAL record sequence: a real ``livekit.rtc.Room`` (the Rust SDK) connects to the server double with the
bridge installed; every record (except libwebrtc's flood) and room event is written to jsonl with the exact time the
machine got it, and the phases the live machine produced are written next to it (``.live.json``) so the replay
test can check that replaying gives the same phases.

Run inside the private network namespace (real ICE)::

    python -m lk_probe.testing.netns [--hosts lkp-test.livekit.cloud=127.0.0.1] -- \
        /work/venvs/v18/bin/python tests/rust/capture.py SCENARIO [--out DIR]

Scenarios: see ``SCENARIOS`` below (``cloud_*`` need ``--hosts lkp-test.livekit.cloud=127.0.0.1`` so that the SDK
runs its LiveKit-Cloud region fetch against the double). Output: ``tests/data/records/real-<scenario>-<livekit
version>.jsonl`` plus ``.live.json`` (the live machine's sink calls, keys numbered by first appearance).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import itertools
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "records"
CLOUD_HOST = "lkp-test.livekit.cloud"


class Tee:
    """What get_machine() returns during a capture. Every input that reaches the machine is applied under one lock
    and numbered, so the file can be replayed in exactly the order the live machine saw (records and room events
    come from different Rust threads; their times alone do not fix the order)."""

    def __init__(self, machine: Any, rows: list[dict[str, Any]]) -> None:
        self.machine = machine
        self.rows = rows
        self.lock = threading.Lock()
        self.seq = itertools.count()
        self.local = threading.local()

    def tap(self, t: int, level: int, target: str, line: Any, module_path: str, message: str) -> None:
        row = {"t": t, "kind": "record", "level": level, "target": target, "line": line, "module_path": module_path,
               "message": message}
        self.local.row = row
        self.rows.append(row)

    def apply(self, row: dict[str, Any] | None, fn: Any, *args: Any, **kw: Any) -> None:
        with self.lock:
            if row is not None:
                row["seq"] = next(self.seq)
            fn(*args, **kw)

    def record(self, ev: Any, t: int) -> None:
        row = getattr(self.local, "row", None)
        self.apply(row if row is not None and row["t"] == t else None, self.machine.record, ev, t)

    def room_event(self, name: str, t: int, **data: Any) -> None:
        row = {"t": t, "kind": "room_event", "name": name, "data": data}
        self.rows.append(row)
        self.apply(row, self.machine.room_event, name, t, **data)

    def call(self, kind: str, t: int, fn: Any, *args: Any, **extra: Any) -> None:
        row = {"t": t, "kind": kind, **extra}
        self.rows.append(row)
        self.apply(row, fn, t, *args)


def ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows by time, except that the rows the machine consumed keep the order it consumed them in."""
    rows = sorted(rows, key=lambda r: r["t"])
    slots = [i for i, r in enumerate(rows) if "seq" in r]
    applied = sorted((rows[i] for i in slots), key=lambda r: r["seq"])
    for i, r in zip(slots, applied):
        rows[i] = r
    for r in rows:
        r.pop("seq", None)
    return rows


def _sink_calls(sink: Any) -> list[dict[str, Any]]:
    keys: dict[Any, int] = {}

    def k(key: Any) -> Any:
        if key is None:
            return None
        return keys.setdefault(key, len(keys))

    out = []
    for c in sink.calls:
        out.append({"op": c.op, "key": k(c.key), "t": c.t, "phase": c.phase, "parent": k(c.parent), "name": c.name,
                    "error_type": c.error_type, "error_message": c.error_message, "attributes": c.attributes})
    return out


async def capture(scenario: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Run one scenario live; return (meta, rows sorted by time, the live machine's sink calls)."""
    from livekit import rtc

    from lk_probe._rust import bridge
    from lk_probe._rust.machine import EngineMachine
    from lk_probe._sink import ListSink
    from lk_probe.testing import LiveKitDouble

    version = rtc.__version__
    rows: list[dict[str, Any]] = []
    sink = ListSink()
    machine = EngineMachine(sink, version=version)
    tee = Tee(machine, rows)

    bridge.install(lambda: tee, room_events=True)
    bridge.set_tap(tee.tap)
    double = LiveKitDouble().start_in_thread()
    spec = SCENARIOS[scenario]
    url = double.url
    if spec.get("cloud"):
        url = f"ws://{CLOUD_HOST}:{double.port}"
    for name, params in spec.get("faults", []):
        double.faults.add(name, **params)
    if "subscriber_primary" in spec:
        double.signal.subscriber_primary = spec["subscriber_primary"]
    room = rtc.Room()
    opts = rtc.RoomOptions(**spec.get("options", {}))
    error: str | None = None
    tee.call("connect_started", time.time_ns(), machine.connect_started, url, url=url)
    try:
        await room.connect(url, double.token("alice", "cap-room"), opts)
    except Exception as e:  # noqa: BLE001
        error = str(e)
    tee.call("connect_finished", time.time_ns(), machine.connect_finished, error, error=error)
    bridge.attach_events()
    try:
        if error is None:
            await asyncio.sleep(0.5)
            action = spec.get("action")
            if action:
                for name, params in spec.get("faults_after", []):
                    double.faults.add(name, **params)
                fn = getattr(double.signal, action[0])
                await asyncio.to_thread(double.call, fn, "alice", **action[1])
                deadline = time.monotonic() + spec.get("wait", 20)
                want = spec.get("until", "reconnected")
                seen = asyncio.Event()
                room.on(want, lambda *a: seen.set())
                try:
                    await asyncio.wait_for(seen.wait(), max(0.1, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    pass
                await asyncio.sleep(spec.get("settle", 1.0))
    finally:
        try:
            await asyncio.wait_for(room.disconnect(), 10)
        except Exception:  # noqa: BLE001
            pass
        await asyncio.sleep(0.3)
        tee.call("closed", time.time_ns(), machine.closed)
        bridge.set_tap(None)
        bridge.uninstall()
        double.stop_thread()
    rows = ordered(rows)
    meta = {"kind": "meta", "livekit": version, "scenario": scenario, "source": "captured",
            "description": spec["description"]}
    return meta, rows, _sink_calls(sink)


async def run(scenario: str, out_dir: Path) -> Path:
    meta, rows, calls = await capture(scenario)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"real-{scenario}-{meta['livekit']}"
    path = out_dir / f"{stem}.jsonl"
    with path.open("w") as f:
        f.write(json.dumps(meta) + "\n")
        for r in rows:
            f.write(json.dumps(r) + "\n")
    (out_dir / f"{stem}.live.json").write_text(json.dumps(calls, indent=0))
    return path


SCENARIOS: dict[str, dict[str, Any]] = {
    "ok": {"description": "plain connect, then disconnect"},
    "signal_timeout_once": {"description": "first signal upgrade held 8 s: attempt 1 times out (5 s), attempt 2 ok",
                            "faults": [("signal_upgrade_delay", {"delay": 8.0, "count": 1})]},
    "http_503_once": {"description": "first signal upgrade answered 503: attempt 1 fails fast, attempt 2 ok",
                      "faults": [("signal_upgrade_status", {"status": 503, "count": 1})]},
    "v1_404": {"description": "v1 upgrade answered 404 (every time): the client falls back to /rtc (v0)",
               "options": {"single_peer_connection": True},
               "faults": [("signal_upgrade_status", {"status": 404, "path": "v1", "count": None})]},
    "join_delay": {"description": "first JoinResponse delayed 7 s: attempt 1 join timeout (5 s), attempt 2 ok",
                   "faults": [("join_response_delay", {"delay": 7.0, "count": 1})]},
    "ice_never_once": {"description": "ICE never completes on the first join: wait_pc_connection timeout (15 s)",
                       "faults": [("ice_never", {"count": 1})]},
    "cloud_region_timeout": {"description": "cloud host: signal upgrade held (5 s timeout), region fetch hangs (3 s "
                                            "timeout), attempt 2 ok (the seed-000 report)",
                             "cloud": True,
                             "faults": [("signal_upgrade_delay", {"delay": 8.0, "count": 1}),
                                        ("region_hang", {"count": 1})]},
    "cloud_region_fallback": {"description": "cloud host: signal upgrade held (5 s timeout), region fetch answers, the "
                                             "fallback connection to the region URL succeeds in the same attempt",
                              "cloud": True, "faults": [("signal_upgrade_delay", {"delay": 8.0, "count": 1})]},
    "leave_resume": {"description": "connected, server sends Leave{RESUME}: resume attempt, recovered",
                     "action": ("send_leave", {"action": "RESUME"})},
    "leave_reconnect": {"description": "connected, server sends Leave{RECONNECT}: restart attempt, recovered",
                        "action": ("send_leave", {"action": "RECONNECT"})},
    "refuse_resume": {"description": "Leave{RESUME}, the resume is refused (Leave STATE_MISMATCH RECONNECT): "
                                     "resume fails, restart recovers",
                      "faults_after": [("refuse_resume", {"count": 1})],
                      "action": ("send_leave", {"action": "RESUME"})},
    "signal_abort": {"description": "signal TCP aborted: signal client closed → resume → recovered",
                     "action": ("abort_signal", {})},
    "leave_disconnect": {"description": "server Leave{DISCONNECT}: disconnected", "until": "disconnected",
                         "action": ("send_leave", {"action": "DISCONNECT"})},
    "lose_node": {"description": "node loss / migration without a Leave (TCP abort, participant forgotten): resume "
                                "refused, full rejoin", "action": ("lose_node", {})},
    "give_up": {"description": "Leave{RESUME}, every resume refused and every rejoin answered 503: reconnection "
                              "exhausted (1.1.2: no disconnected event)",
                "faults_after": [("refuse_resume", {"count": None}), ("refuse_rejoin", {"count": None, "status": 503})],
                "action": ("send_leave", {"action": "RESUME"}), "until": "disconnected", "wait": 75, "settle": 0.5},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--out", default=str(DATA))
    a = ap.parse_args()
    path = asyncio.run(run(a.scenario, Path(a.out)))
    print(path)
    sys.stdout.flush()
    os._exit(0)  # the FFI can abort at interpreter exit (a teardown race in the Rust runtime)


if __name__ == "__main__":
    main()
