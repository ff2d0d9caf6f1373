"""What lk_probe costs a dispatching backend, measured side by side in one run.

    python -m lk_probe.testing.netns -- python benchmarks/dispatch_overhead.py [--rounds 10] [--calls 20] [--watches 20]

One process, one server double (its own thread) and one OTLP receiver (a process of its own). The real ``livekit.api`` client makes
``create_dispatch`` calls in blocks of ``--calls``: one block with lk_probe installed (exporting every span over
OTLP/HTTP to the receiver), one block without (uninstalled: the client's own methods), the order flipping every round,
for ``--rounds`` rounds. Printed: the latency of each side (median, p95) and their ratios (target ≤ 1.05), with the
spread of the per-round median ratios. The dispatch watch is off for these calls (the default); it runs in the
background and adds nothing to the call itself.

Then ``--watches`` watches follow dispatches whose agent joins normally (the agent participant appears in the room
0.2–3 s after the dispatch, as the double records a join): printed, the API calls and looks a watch made for such a
join (the watch's cost to the LiveKit API).

The machine's load average is printed: on a shared machine the absolute figures move, the ratios much less.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import describe, need_netns  # noqa: E402


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20, method="inclusive")[18] if len(xs) > 1 else xs[0]


def install(endpoint: str, *, watch: float = 0.0) -> None:
    import lk_probe

    os.environ.update(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                      OTEL_SERVICE_NAME="backend", OTEL_METRICS_EXPORTER="none",
                      LK_PROBE_SET_GLOBAL_PROVIDER="false", LK_PROBE_DISPATCH_WATCH=str(watch))
    lk_probe.install()


def uninstall() -> None:
    import lk_probe
    from lk_probe import _provider

    lk_probe.flush()
    provider = _provider.current()
    lk_probe.uninstall()
    _provider.reset()
    if provider is not None and hasattr(provider, "shutdown"):
        provider.shutdown()


async def block(lk, n: int, tag: str) -> list[float]:
    from livekit import api

    took = []
    for i in range(n):
        t0 = time.perf_counter()
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="bench",
                                                                               room=f"{tag}-{i}"))
        took.append(time.perf_counter() - t0)
    return took


async def latency(double, endpoint: str, rounds: int, calls: int) -> None:
    from livekit import api

    sides: dict[str, list[float]] = {"with": [], "without": []}
    round_ratios = []
    async with api.LiveKitAPI(url=double.http_url, api_key=double.api_key, api_secret=double.api_secret) as lk:
        await block(lk, calls, "warmup")  # the connection, the first token: paid once, by neither side
        for r in range(rounds):
            medians = {}
            for side in (("with", "without") if r % 2 == 0 else ("without", "with")):
                if side == "with":
                    install(endpoint)
                try:
                    took = await block(lk, calls, f"{side}-{r}")
                finally:
                    if side == "with":
                        uninstall()
                sides[side] += took
                medians[side] = statistics.median(took)
            round_ratios.append(medians["with"] / medians["without"])
            print(f"round {r + 1}: with {medians['with'] * 1000:.2f} ms, without {medians['without'] * 1000:.2f} ms, "
                  f"ratio {round_ratios[-1]:.3f}", flush=True)
    w, wo = sides["with"], sides["without"]
    print(f"\ncreate_dispatch with lk_probe:    {describe(w)}")
    print(f"create_dispatch without lk_probe: {describe(wo)}")
    print(f"ratio of medians {statistics.median(w) / statistics.median(wo):.3f} (target <= 1.05), "
          f"of p95 {p95(w) / p95(wo):.3f}; per-round median ratios {min(round_ratios):.3f}"
          f"..{max(round_ratios):.3f}")


async def watch_cost(double, endpoint: str, watches: int) -> None:
    import random

    from lk_probe import _watch
    from lk_probe.testing import ParticipantState
    from lk_probe.testing._core import new_sid
    from livekit import api

    def join(room: str) -> None:
        r = double.rooms[room]
        r.participants["agent"] = ParticipantState(identity="agent", sid=new_sid("PA_"), name="agent", kind="agent")

    install(endpoint, watch=30)
    results = []
    try:
        async with api.LiveKitAPI(url=double.http_url, api_key=double.api_key, api_secret=double.api_secret) as lk:
            for i in range(watches):
                room = f"watch-{i}"
                await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="bench", room=room))
                task = next(iter(_watch._active))
                await asyncio.sleep(random.uniform(0.2, 3.0))
                double.call(join, room)
                results.append(await task)
    finally:
        uninstall()
    outcomes = {r.outcome for r in results}
    calls = [r.api_calls for r in results]
    looks = [r.polls for r in results]
    joined = [r.joined_after_s for r in results if r.joined_after_s is not None]
    print(f"\nwatches: {len(results)} (outcomes {sorted(outcomes)}), agent joined after "
          f"{describe(joined, 's', 1.0)}")
    print(f"API calls per watch: median {statistics.median(calls):g}, max {max(calls)}; looks per watch: median "
          f"{statistics.median(looks):g}, max {max(looks)} (one look = ListDispatch + ListParticipants)")


RECEIVER = """
import sys, time
from lk_probe.testing.otlp import OtlpReceiver
rx = OtlpReceiver().start()
print(rx.http_endpoint, flush=True)
sys.stdin.read()  # until the benchmark ends
print(len(rx.spans()), flush=True)
"""


async def main(args: argparse.Namespace) -> None:
    import subprocess

    from lk_probe.testing import LiveKitDouble

    print(f"load average {os.getloadavg()}")
    double = LiveKitDouble().start_in_thread()
    # the receiver in a process of its own: decoding the exports must not take this process's time (only the
    # "with" side exports)
    rx = subprocess.Popen([sys.executable, "-c", RECEIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = rx.stdout.readline().strip()
        await latency(double, endpoint, args.rounds, args.calls)
        if args.watches:
            await watch_cost(double, endpoint, args.watches)
        out, _ = rx.communicate("", timeout=30)
        print(f"\nspans the receiver got: {out.strip()}")
    finally:
        if rx.poll() is None:
            rx.kill()
        double.stop_thread()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--calls", type=int, default=20, help="create_dispatch calls per side and round")
    p.add_argument("--watches", type=int, default=20, help="watches of a normal join (0: none)")
    args = p.parse_args()
    need_netns()
    asyncio.run(main(args))
