"""Profiling harness for benchmarks/job_overhead.py (see benchmarks/_profiles.py).

On the path (PYTHONPATH) of a worker started with ``LKP_PROFILE_OUT=<file>``, it profiles every thread of the worker
process (``python agent.py start`` only: the forkserver and the job processes are left alone) with cProfile, counting
CPU time (``time.thread_time``, so a thread waiting costs nothing). SIGRTMIN+1 sets the zero: what ran before it, the
worker's start-up, is left out. SIGRTMIN+2 writes the merged profile to ``<file>`` (pstats format) and each thread's
CPU time since the zero to ``<file>.threads.json``; an error of the harness goes to ``<file>.err``."""

import os
import signal
import sys

# (livekit-agents takes SIGUSR1 for its stack dumps)
ZERO_SIGNAL = signal.SIGRTMIN + 1
DUMP_SIGNAL = signal.SIGRTMIN + 2

if os.environ.get("LKP_PROFILE_OUT") and sys.argv[-1:] == ["start"]:
    import cProfile
    import json
    import marshal
    import re
    import threading
    import time

    _out = os.environ["LKP_PROFILE_OUT"]
    _lock = threading.Lock()
    _profiles: list[cProfile.Profile] = []
    _cpu: dict[str, float] = {}  # thread kind -> CPU seconds of the threads of that kind that ended

    def _kind(name: str) -> str:
        return re.sub(r"[-_ ]?\d+", "", re.sub(r" \(.*\)$", "", name)) or name

    _orig_bootstrap = threading.Thread._bootstrap_inner

    def _bootstrap_inner(self):  # every thread the worker starts runs under a profiler of its own
        prof = cProfile.Profile(time.thread_time)
        with _lock:
            _profiles.append(prof)
        prof.enable()
        try:
            _orig_bootstrap(self)
        finally:
            prof.disable()
            with _lock:
                _cpu[_kind(self.name)] = _cpu.get(_kind(self.name), 0.0) + time.thread_time()

    threading.Thread._bootstrap_inner = _bootstrap_inner
    _main = cProfile.Profile(time.thread_time)
    _profiles.append(_main)

    def _thread_cpu(tid: int) -> float:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return 0.0

    _zero: list = [{}, {}]

    def _collect():
        stats = {}
        with _lock:
            profs = list(_profiles)
            cpu = dict(_cpu)
        for t in threading.enumerate():  # first: what follows is the harness's own work
            if t.native_id is not None:
                k = "MainThread" if t is threading.main_thread() else _kind(t.name)
                cpu[k] = cpu.get(k, 0.0) + _thread_cpu(t.native_id)
        for p in profs:
            p.snapshot_stats()  # not create_stats(): that would disable the profiler of *this* thread
            for func, (cc, nc, tt, ct, callers) in p.stats.items():
                if func in stats:
                    occ, onc, ott, oct_, ocallers = stats[func]
                    merged = dict(ocallers)
                    for k, v in callers.items():
                        merged[k] = tuple(a + b for a, b in zip(merged[k], v)) if k in merged else v
                    stats[func] = (occ + cc, onc + nc, ott + tt, oct_ + ct, merged)
                else:
                    stats[func] = (cc, nc, tt, ct, dict(callers))
        return stats, cpu

    def _zero_now(*_):
        global _main
        try:
            # the main thread (where this handler runs) gets a fresh profiler; the other threads' profiles, which
            # cannot be swapped from here, are subtracted at the dump
            _main.disable()
            with _lock:
                _profiles.remove(_main)
            _zero[:] = _collect()
            _main = cProfile.Profile(time.thread_time)
            with _lock:
                _profiles.append(_main)
            _main.enable()
        except BaseException:
            import traceback
            with open(_out + ".err", "a") as f:
                traceback.print_exc(file=f)

    def _minus(a, b):
        return tuple(x - y for x, y in zip(a, b))

    def _dump(*_):
        stats, cpu = _collect()
        zs, zc = _zero
        for func, (cc, nc, tt, ct, callers) in list(stats.items()):
            if func in zs:
                z = zs[func]
                callers = {k: (_minus(v, z[4][k]) if k in z[4] else v) for k, v in callers.items()}
                stats[func] = (*_minus((cc, nc, tt, ct), z[:4]), callers)
        cpu = {k: v - zc.get(k, 0.0) for k, v in cpu.items()}
        with open(_out + ".tmp", "wb") as f:
            marshal.dump(stats, f)
        with open(_out + ".threads.json", "w") as f:
            json.dump(cpu, f)
        os.replace(_out + ".tmp", _out)

    signal.signal(ZERO_SIGNAL, _zero_now)
    signal.signal(DUMP_SIGNAL, _dump)
    _main.enable()
