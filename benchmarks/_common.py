"""Shared pieces of the benchmarks: they print ratios measured side by side in one run, never pass/fail on time."""

from __future__ import annotations

import asyncio
import os
import statistics
import time


def rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def describe(xs: list[float], unit: str = "ms", scale: float = 1000.0) -> str:
    xs = sorted(xs)
    if not xs:
        return "n=0"
    q = statistics.quantiles(xs, n=20) if len(xs) >= 2 else [xs[0]] * 19
    return (f"n={len(xs)} min={xs[0] * scale:.1f}{unit} median={statistics.median(xs) * scale:.1f}{unit} "
            f"p95={q[18] * scale:.1f}{unit} max={xs[-1] * scale:.1f}{unit}")


async def connect_once(double, identity: str, room: str) -> float:
    """One real Room.connect + disconnect against the double; returns the connect latency in seconds."""
    from livekit import rtc

    r = rtc.Room()
    t0 = time.perf_counter()
    await r.connect(double.url, double.token(identity, room))
    took = time.perf_counter() - t0
    await r.disconnect()
    return took


def need_netns() -> None:
    from lk_probe.testing import netns

    if not netns.in_private_netns():
        raise SystemExit("run inside the private network namespace: "
                         "python -m lk_probe.testing.netns -- python benchmarks/<name>.py")


def run(coro) -> None:
    asyncio.run(coro)
