"""Serve the LiveKit server double by hand: ``python -m lk_probe.testing.server --port 7880 --duration 600``.

Prints the URL, API key and secret (as shell exports), serves for ``--duration`` seconds (or until Ctrl+C) and
prints a summary of the event log when it stops. Loopback only unless ``--host`` names another address together with
``--allow-non-loopback``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections import Counter

from ._server import LiveKitDouble


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lk_probe.testing.server", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7880, help="0 = any free port (default 7880)")
    p.add_argument("--duration", type=float, required=True, help="stop by itself after this many seconds")
    p.add_argument("--api-key", default="lkp_test_key")
    p.add_argument("--api-secret", default=None, help="default: random")
    p.add_argument("--allow-non-loopback", action="store_true")
    p.add_argument("--verbose", "-v", action="store_true", help="print every event as it happens")
    args = p.parse_args(argv)
    if args.duration <= 0:
        p.error("--duration must be positive")
    try:
        double = LiveKitDouble(host=args.host, port=args.port, api_key=args.api_key, api_secret=args.api_secret,
                               allow_non_loopback=args.allow_non_loopback)
    except ValueError as e:
        p.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.verbose:
        double.events.subscribe(lambda e: print(f"[{e.t - double.started_at:8.3f}s] {e.kind} {e.data}", flush=True))
    return asyncio.run(_serve(double, args.duration))


async def _serve(double: LiveKitDouble, duration: float) -> int:
    try:
        await double.start()
    except OSError as e:
        print(f"cannot listen on {double.host}:{double.port}: {e}", file=sys.stderr)
        return 2
    print(f"export LIVEKIT_URL={double.url}\nexport LIVEKIT_API_KEY={double.api_key}\n"
          f"export LIVEKIT_API_SECRET={double.api_secret}\n"
          f"# LiveKit server double serving for {duration:g}s (signalling: "
          f"{'yes' if double.signal is not None else 'no'}); faults: {', '.join(double.fault_descriptions)}",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), duration)
    except asyncio.TimeoutError:
        pass
    finally:
        await double.stop()
    counts = Counter(e.kind for e in double.events)
    print("events: " + ", ".join(f"{k}={n}" for k, n in sorted(counts.items())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
