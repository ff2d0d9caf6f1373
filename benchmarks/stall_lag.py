"""How long after a phase crosses its budget its stall record is in the OTLP receiver.

    python -m lk_probe.testing.netns -- python benchmarks/stall_lag.py [--runs 10]

Each run: a real Room.connect against the server double, whose signal upgrade is held 1.6 s; lk_probe (provider built from
OTEL_* as in production, batch delay 500 ms) must export the rtc.signal stall record while the connect is still
pending. Prints the distribution of (receipt time − the instant the 1 s budget was crossed); target: ≤ 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import describe, need_netns  # noqa: E402


async def one(double, rx, i: int, floor: float) -> tuple[float, float]:
    """One connect whose signal upgrade is held 1.6 s: the 1 s budget is crossed while it is pending."""
    from livekit import rtc

    double.faults.add("signal_upgrade_delay", delay=1.6, count=1)
    room = rtc.Room()
    await room.connect(double.url, double.token(f"stall-{i}", "bench"))
    stall = await asyncio.to_thread(rx.wait_for, lambda s: s.phase == "stall" and s.start > floor and s.attributes.get(
        "lk_probe.stall.phase") == "rtc.signal" and s.attributes.get("lk_probe.stall.count") == 1, 15)
    await room.disconnect()
    crossed = stall.start + stall.attributes["lk_probe.stall.budget"]  # the record's span starts with the phase
    return stall.received_ns / 1e9 - crossed, stall.start


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    need_netns()
    from lk_probe.testing import LiveKitDouble
    from lk_probe.testing.otlp import OtlpReceiver

    double = LiveKitDouble().start_in_thread()
    rx = OtlpReceiver().start()
    os.environ.update(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=rx.http_endpoint, LK_PROBE_BUDGET_RTC_SIGNAL="1.0",
                      OTEL_METRICS_EXPORTER="none", LK_PROBE_SET_GLOBAL_PROVIDER="false")
    import lk_probe

    lk_probe.install()
    try:
        lags, floor = [], 0.0
        for i in range(args.runs):
            lag, floor = await one(double, rx, i, floor)
            lags.append(lag)
        print(f"stall record lag after the budget was crossed: {describe(lags)}  (target ≤ 1000 ms)")
    finally:
        lk_probe.uninstall()
        rx.stop()
        double.stop_thread()


if __name__ == "__main__":
    asyncio.run(main())
    os._exit(0)
