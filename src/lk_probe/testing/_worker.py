"""``AgentWorker``: a real livekit-agents worker subprocess (``python agent.py start``) pointed at the double."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from ._core import Event
    from ._server import LiveKitDouble

# worker ids already matched to an AgentWorker, per double (two workers with the same agent name must not both claim
# the first registration)
_claimed: "dict[int, set[str]]" = {}
_claimed_lock = threading.Lock()
_live: "set[AgentWorker]" = set()  # started and not yet stopped; the lk_double fixture's leak check reads it


def group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group ``pgid`` (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ... ; comm may contain spaces/parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


class AgentWorker:
    """Runs ``python agent_file start`` with LIVEKIT_URL/API_KEY/API_SECRET for the double (or a URL) in its own
    process group; :meth:`stop` always leaves no process of that group behind.

    Usable as a (sync) context manager; blocking calls are short or bounded by ``timeout``, and async tests can call
    them through ``asyncio.to_thread``.
    """

    def __init__(self, agent_file: str | os.PathLike[str], double_or_url: "LiveKitDouble | str", *,
                 api_key: str | None = None, api_secret: str | None = None, agent_name: str = "",
                 env: Mapping[str, str] | None = None, python: str = sys.executable,
                 log_path: str | os.PathLike[str] | None = None, extra_args: Iterable[str] = (),
                 stop_timeout: float = 10) -> None:
        self.agent_file = Path(agent_file)
        if isinstance(double_or_url, str):
            self.double: "LiveKitDouble | None" = None
            self.url = double_or_url
        else:
            self.double = double_or_url
            self.url = double_or_url.url
        self.api_key = api_key or (self.double.api_key if self.double else os.environ.get("LIVEKIT_API_KEY", ""))
        self.api_secret = api_secret or (self.double.api_secret if self.double
                                         else os.environ.get("LIVEKIT_API_SECRET", ""))
        self.agent_name = agent_name
        self.env = dict(env or {})
        self.python = python
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = tuple(extra_args)
        self.stop_timeout = stop_timeout  # what __exit__ and the agent_worker fixture pass to stop()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pgid: int | None = None
        self.worker_id: str | None = None
        self._lines: list[str] = []
        self._lines_cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._start_seq = -1

    def __repr__(self) -> str:
        state = "running" if self.proc and self.proc.poll() is None else "stopped"
        return f"<AgentWorker {self.agent_file.name} agent_name={self.agent_name!r} {state} worker={self.worker_id}>"

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> "AgentWorker":
        if self.proc is not None:
            raise RuntimeError("AgentWorker already started")
        if not self.agent_file.exists():
            raise FileNotFoundError(self.agent_file)
        env = dict(os.environ)
        env.update(LIVEKIT_URL=self.url, LIVEKIT_API_KEY=self.api_key, LIVEKIT_API_SECRET=self.api_secret,
                   LKP_AGENT_NAME=self.agent_name, PYTHONUNBUFFERED="1")
        no_proxy = ",".join(filter(None, [env.get("NO_PROXY", ""), "127.0.0.1", "localhost", "::1"]))
        env["NO_PROXY"] = env["no_proxy"] = no_proxy
        env.pop("LIVEKIT_WORKER_TOKEN", None)  # would switch the worker into LiveKit Cloud hosting mode
        env.update(self.env)
        if self.double is not None:
            evs = list(self.double.events)
            self._start_seq = evs[-1].seq if evs else -1
        self.proc = subprocess.Popen([self.python, str(self.agent_file), "start", *self.extra_args], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=str(self.agent_file.parent))
        self.pgid = self.proc.pid  # start_new_session: the worker leads its own session and process group
        _live.add(self)
        self._reader = threading.Thread(target=self._read, name=f"agent-worker-{self.proc.pid}", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        log = open(self.log_path, "w", encoding="utf-8") if self.log_path else None
        try:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace")
                with self._lines_cond:
                    self._lines.append(line)
                    self._lines_cond.notify_all()
                if log:
                    log.write(line)
                    log.flush()
        finally:
            if log:
                log.close()
            with self._lines_cond:
                self._lines_cond.notify_all()

    def wait_registered(self, timeout: float = 30) -> str:
        """Wait until this worker registered; return its worker id (``AW_…``, or "" when pointed at a URL)."""
        if self.proc is None:
            raise RuntimeError("AgentWorker not started")
        if self.double is None:
            self.wait_output("registered worker", timeout=timeout)
            self.worker_id = ""
            return ""
        deadline = time.monotonic() + timeout
        key = id(self.double)
        while True:
            left = deadline - time.monotonic()
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent worker exited with {self.proc.returncode} before registering:\n"
                                   f"{self.output[-4000:]}")
            with _claimed_lock:
                taken = _claimed.setdefault(key, set())
                for e in self.double.events.of_kind("worker_registered"):
                    if (e.seq > self._start_seq and e["agent_name"] == self.agent_name
                            and e["worker"] not in taken):
                        taken.add(e["worker"])
                        self.worker_id = e["worker"]
                        return e["worker"]
            if left <= 0:
                raise TimeoutError(f"agent worker {self.agent_file.name} (agent_name={self.agent_name!r}) did not "
                                   f"register with the double within {timeout}s; output:\n{self.output[-4000:]}")
            try:
                self.double.events.wait_for_sync("worker_registered", timeout=min(left, 0.5))
            except TimeoutError:
                pass
            time.sleep(0.05)

    def wait_output(self, pattern: str, timeout: float = 30) -> str:
        """Wait for an output line matching the regex ``pattern``; return the line."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._lines_cond:
            seen = 0
            while True:
                for line in self._lines[seen:]:
                    if rx.search(line):
                        return line
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no output line matching {pattern!r} within {timeout}s; output:\n"
                                       f"{self.output[-4000:]}")
                if self._reader is not None and not self._reader.is_alive():
                    raise RuntimeError(f"agent worker output ended without a line matching {pattern!r}:\n"
                                       f"{self.output[-4000:]}")
                self._lines_cond.wait(min(left, 0.5))

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout``; reap; return the worker's exit code.

        livekit-agents 1.4.6 sometimes never exits on SIGTERM after it ran a job (its one-shot exit handler raises
        inside a socket write, asyncio swallows it and the worker reconnects instead); SIGKILL then ends it.
        """
        proc, pgid = self.proc, self.pgid
        if proc is None or pgid is None:
            return None
        try:
            if proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    proc.wait(5)
            # job processes outlive the worker only if something went wrong: give them a moment, then kill
            deadline = time.monotonic() + min(timeout, 3)
            while group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if group_members(pgid):
                self._signal_group(signal.SIGKILL)
                deadline = time.monotonic() + 5
                while group_members(pgid) and time.monotonic() < deadline:
                    time.sleep(0.05)
        finally:
            if self._reader is not None:
                self._reader.join(5)
            if proc.stdout is not None:
                proc.stdout.close()
            _live.discard(self)
        return proc.returncode

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)  # type: ignore[arg-type]
        except ProcessLookupError:
            pass

    def alive_pids(self) -> list[int]:
        """Live processes of this worker's process group (worker and job processes)."""
        return group_members(self.pgid) if self.pgid is not None else []

    @property
    def output(self) -> str:
        with self._lines_cond:
            return "".join(self._lines)

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def __enter__(self) -> "AgentWorker":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop(self.stop_timeout)


def live_workers() -> list[AgentWorker]:
    return list(_live)


def registered_event(double: "LiveKitDouble", worker_id: str) -> "Event | None":
    for e in double.events.of_kind("worker_registered"):
        if e["worker"] == worker_id:
            return e
    return None
