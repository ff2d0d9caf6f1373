"""With the OTLP endpoint refusing connections or black-holed, Room.connect is not slower
than with a working endpoint, memory stays bounded and lk_probe warns once.

    python -m lk_probe.testing.netns -- python benchmarks/exporter_down.py [--rounds 4] [--per-round 5]

Variants are interleaved round by round in one process (one real Room.connect + disconnect per sample, against the
server double); prints the median connect latency per variant and its ratio to the working endpoint (target ≤ 1.05),
RSS growth, and the number of lk_probe exporter warnings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import connect_once, describe, need_netns, rss_kib  # noqa: E402


class Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "exporting spans to" in record.getMessage():
            self.n += 1


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--per-round", type=int, default=5)
    args = ap.parse_args()
    need_netns()
    import lk_probe
    from lk_probe import _provider
    from lk_probe.testing import LiveKitDouble
    from lk_probe.testing.otlp import OtlpReceiver

    counter = Count()
    logging.getLogger("lk_probe").addHandler(counter)
    os.environ.update(LK_PROBE_SET_GLOBAL_PROVIDER="false", OTEL_EXPORTER_OTLP_TIMEOUT="2", OTEL_METRICS_EXPORTER="none")
    double = LiveKitDouble().start_in_thread()
    rx = OtlpReceiver().start()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    refused_port = free.getsockname()[1]
    free.close()
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(128)
    endpoints = {"working": rx.http_endpoint, "refused": f"http://127.0.0.1:{refused_port}/v1/traces",
                 "black-holed": f"http://127.0.0.1:{hole.getsockname()[1]}/v1/traces"}
    endpoints = {"no lk_probe": "", **endpoints}
    lat: dict[str, list[float]] = {k: [] for k in endpoints}
    rss: dict[str, int] = {k: 0 for k in endpoints}
    try:
        await connect_once(double, "warmup", "bench")  # first connect loads the FFI
        for r in range(args.rounds):
            for name, ep in endpoints.items():
                before = rss_kib()
                if ep:
                    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = ep
                    lk_probe.install()
                for i in range(args.per_round):
                    lat[name].append(await connect_once(double, f"{name}-{r}-{i}".replace(" ", "_"), "bench"))
                if ep:
                    lk_probe.uninstall()
                    _provider.reset()
                rss[name] += rss_kib() - before
        base = statistics.median(lat["working"])
        for name, xs in lat.items():
            print(f"{name:12s} connect {describe(xs)}  ratio to working={statistics.median(xs) / base:.3f}  "
                  f"RSS growth={rss[name]} KiB (includes libwebrtc's own per-connect memory)")
        print(f"lk_probe exporter warnings: {counter.n} (one per failing endpoint expected: 2)")
    finally:
        hole.close()
        rx.stop()
        double.stop_thread()


if __name__ == "__main__":
    asyncio.run(main())
    os._exit(0)  # the FFI can abort while tearing down at interpreter exit (research: server-double gotcha 6)
