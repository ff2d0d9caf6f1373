"""Cost of the Rust record bridge per record, measured side by side in one run.

  python benchmarks/bridge_records.py [--n 200000]

Rows (ns per record, best of several interleaved rounds):
  bare        logging.getLogger("livekit").log(DEBUG, "%s:%s:%s - %s", ...) with the logger at WARN (what
              livekit-agents sets): the call ffi_event_callback makes per record without lk_probe
  libwebrtc   the bridge's proxy.log for a libwebrtc DEBUG record (the flood; fast path, dropped)
  livekit-dbg proxy.log for a livekit DEBUG record that is not a phase marker (table lookup, no match, dropped)
  matching    proxy.log for a phase marker ('connection change, Connected Publisher'): parse + machine + sink
  e2e-bare    the real ffi_event_callback for one libwebrtc DEBUG record, without lk_probe (dropped by the env check)
  e2e-bridge  the same with the bridge installed (LIVEKIT_RTC_DEBUG=1, the proxy drops it)
Target: libwebrtc <= 1.10 x bare.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from lk_probe._rust import bridge  # noqa: E402
from lk_probe._rust.machine import EngineMachine  # noqa: E402

FMT = "%s:%s:%s - %s"
WEBRTC = ("libwebrtc", 43, "libwebrtc::imp::peer_connection_factory",
          "(p2p_transport_channel.cc:1867): Channel[0|1|RW]: New selected connection: Conn[...]")
LKDBG = ("livekit::rtc_engine::rtc_session", 1613, "livekit::rtc_engine::rtc_session",
         'local ice_candidate IceCandidate { candidate: "candidate:1 1 udp 2122260223 127.0.0.2 59162 typ host" }')
MATCH = ("livekit::rtc_engine::rtc_session", 1628, "livekit::rtc_engine::rtc_session",
         "connection change, Connected Publisher")


class NullSink:
    def start(self, *a, **k):
        pass

    def end(self, *a, **k):
        pass

    def event(self, *a, **k):
        pass


def per_call(fn, n):
    gc.disable()
    t0 = time.perf_counter_ns()
    fn(n)
    dt = time.perf_counter_ns() - t0
    gc.enable()
    return dt / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    n = a.n

    real = logging.getLogger("livekit")
    real.setLevel(logging.WARN)  # livekit-agents' default for "livekit"
    os.environ.pop("LIVEKIT_RTC_DEBUG", None)

    from livekit.rtc import _ffi_client as ffi
    from livekit.rtc._proto import ffi_pb2

    machine = EngineMachine(NullSink(), version="1.1.21")
    machine.connect_started(time.time_ns(), "ws://127.0.0.1:7880")
    machine.connect_finished(time.time_ns(), None)
    proxy = bridge._LoggerProxy(real, lambda: machine, False)

    def bare(k):
        log = real.log
        for _ in range(k):
            log(10, FMT, *WEBRTC)

    def webrtc(k):
        log = proxy.log
        for _ in range(k):
            log(10, FMT, *WEBRTC)

    def lkdbg(k):
        log = proxy.log
        for _ in range(k):
            log(10, FMT, *LKDBG)

    def matching(k):
        log = proxy.log
        for _ in range(k):
            log(10, FMT, *MATCH)

    ev = ffi_pb2.FfiEvent()
    r = ev.logs.records.add()
    r.level, r.target, r.module_path, r.line, r.message = ffi_pb2.LogLevel.LOG_DEBUG, WEBRTC[0], WEBRTC[2], 43, WEBRTC[3]
    data = ev.SerializeToString()
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    cb = ffi.ffi_event_callback

    def e2e(k):
        for _ in range(k):
            cb(buf, len(data))

    rows = {"bare": bare, "libwebrtc": webrtc, "livekit-dbg": lkdbg, "matching": matching}
    best = {k: float("inf") for k in list(rows) + ["e2e-bare", "e2e-bridge"]}
    for _ in range(a.rounds):
        for name, fn in rows.items():  # interleaved: the same machine state for every row
            best[name] = min(best[name], per_call(fn, n))
        best["e2e-bare"] = min(best["e2e-bare"], per_call(e2e, n // 10))
        bridge.install(lambda: machine)
        best["e2e-bridge"] = min(best["e2e-bridge"], per_call(e2e, n // 10))
        bridge.uninstall()

    print(f"python {sys.version.split()[0]}, livekit {__import__('livekit.rtc').rtc.__version__}, n={n}, "
          f"best of {a.rounds} interleaved rounds")
    for name in best:
        base = best["e2e-bare"] if name.startswith("e2e") else best["bare"]
        print(f"  {name:<11} {best[name]:8.1f} ns/record   {best[name] / base:5.2f} x "
              f"{'e2e-bare' if name.startswith('e2e') else 'bare'}   {1e9 / best[name]:>12,.0f} records/s")
    ratio = best["libwebrtc"] / best["bare"]
    print(f"non-matching (libwebrtc debug) / bare logging call = {ratio:.2f} (target <= 1.10): "
          f"{'OK' if ratio <= 1.10 else 'OVER'}")
    print(f"matching / bare = {best['matching'] / best['bare']:.1f}; "
          f"end to end per libwebrtc record: +{best['e2e-bridge'] - best['e2e-bare']:.0f} ns "
          f"({best['e2e-bridge'] / best['e2e-bare']:.2f} x)")


if __name__ == "__main__":
    main()
