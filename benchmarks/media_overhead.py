"""What lk_probe's media watch costs a room that is receiving audio, measured side by side in one run.

    python -m lk_probe.testing.netns -- python benchmarks/media_overhead.py [--seconds 10] [--rounds 3]

Each round runs two fresh processes one after the other (the order flips every round), one with lk_probe.install()
and one without. Each starts a server double with a simulated caller sending a tone, connects a real
``livekit.rtc.Room``, subscribes to the caller's microphone and reads it through ``rtc.AudioStream`` for
``--seconds`` (as an agent's audio input does), and reports the process's CPU over that window and the frames read.
Printed: the CPU per second of audio with and without, the difference, and the difference per audio frame (lk_probe
does nothing per frame: it reads each subscribed track's RTP stats a few times a second). The double's own CPU is in
both sides alike. On a shared machine the absolute figures move; compare the sides round by round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import need_netns  # noqa: E402


async def one_side(seconds: float, with_probe: bool) -> dict[str, float]:
    if with_probe:
        from opentelemetry.sdk.trace import TracerProvider

        import lk_probe

        lk_probe.install(tracer_provider=TracerProvider())  # spans made and dropped: the watch's own cost
    from livekit import rtc

    from lk_probe.testing import LiveKitDouble

    double = LiveKitDouble().start_in_thread()
    try:
        double.call(double.signal.add_caller, "bench", "caller")
        room = rtc.Room()
        subscribed: asyncio.Future = asyncio.get_running_loop().create_future()
        room.on("track_subscribed", lambda t, *_: subscribed.done() or subscribed.set_result(t))
        await room.connect(double.url, double.token("listener", "bench"))
        track = await asyncio.wait_for(subscribed, 10)
        stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
        frames = 0
        t0, c0 = time.monotonic(), time.process_time()
        async for _ in stream:
            frames += 1
            if time.monotonic() - t0 >= seconds:
                break
        cpu, wall = time.process_time() - c0, time.monotonic() - t0
        await stream.aclose()
        await room.disconnect()
        return {"cpu": cpu, "wall": wall, "frames": frames}
    finally:
        double.stop_thread()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--side", choices=("with", "without"))
    args = ap.parse_args()
    if args.side:
        result = asyncio.run(one_side(args.seconds, args.side == "with"))
        print(json.dumps(result), flush=True)
        os._exit(0)  # the FFI can abort at interpreter exit after everything was measured
    need_netns()
    per: dict[str, list[dict[str, float]]] = {"with": [], "without": []}
    for r in range(args.rounds):
        order = ("with", "without") if r % 2 == 0 else ("without", "with")
        for side in order:
            out = subprocess.run([sys.executable, __file__, "--side", side, "--seconds", str(args.seconds)],
                                 capture_output=True, text=True, timeout=args.seconds + 60)
            line = next((x for x in reversed(out.stdout.splitlines()) if x.startswith("{")), None)
            if line is None:
                sys.exit(f"{side} side failed:\n{out.stderr[-2000:]}")
            per[side].append(json.loads(line))
        w, wo = per["with"][-1], per["without"][-1]
        print(f"round {r + 1}: with {w['cpu'] / w['wall'] * 1000:.1f} ms CPU/s ({w['frames']} frames), without "
              f"{wo['cpu'] / wo['wall'] * 1000:.1f} ms CPU/s ({wo['frames']} frames)   load {os.getloadavg()[0]:.2f}")
    med = {s: statistics.median(x["cpu"] / x["wall"] for x in per[s]) for s in per}
    frames_per_s = statistics.median(x["frames"] / x["wall"] for x in per["with"])
    diff = med["with"] - med["without"]
    print(f"median CPU per second of audio: with {med['with'] * 1000:.1f} ms, without {med['without'] * 1000:.1f} "
          f"ms, difference {diff * 1000:+.2f} ms/s (ratio {med['with'] / med['without']:.3f})")
    print(f"per audio frame ({frames_per_s:.0f} frames/s): {diff / frames_per_s * 1e6:+.1f} µs")


if __name__ == "__main__":
    main()
