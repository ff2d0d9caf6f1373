"""Harness for lk_probe's end-to-end tests: the real livekit-agents worker (tests/core/agents/probe_agent.py, which
calls lk_probe.install() at its top) against the server double, exporting over real OTLP/HTTP to a real receiver."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from lk_probe._ids import trace_id_for
from lk_probe.spans import SpanRecord, SpanSet

AGENT = Path(__file__).parent / "agents" / "probe_agent.py"


class Probe:
    def __init__(self, double: Any, agent_worker: Callable[..., Any], receiver: Any, otlp_env: dict[str, str],
                 tmp_path: Path) -> None:
        self.double = double
        self._agent_worker = agent_worker
        self.rx = receiver
        self.otlp_env = otlp_env
        self.markers_path = tmp_path / "markers.jsonl"
        self.markers_path.touch()
        self.log_path = tmp_path / "worker.log"
        self.worker: Any = None
        self.dispatch_of: dict[str, str] = {}  # job id -> its dispatch id

    def start_worker(self, agent_name: str = "probe", url: str | None = None, agent: Path = AGENT, **env: str) -> Any:
        """``url``: the LiveKit URL the worker uses (default: the double's), e.g. a *.livekit.cloud name; ``agent``:
        the agent file (default: probe_agent.py)."""
        full = {**self.otlp_env, "LKP_MARKERS": str(self.markers_path), "OTEL_SERVICE_NAME": "probe-agent", **env}
        where = {"double_or_url": url} if url else {}
        self.worker = self._agent_worker(agent, agent_name=agent_name, env=full, log_path=self.log_path, **where)
        self.worker.wait_registered(60)
        return self.worker

    def dispatch(self, room: str = "r1", agent_name: str = "probe") -> str:
        from livekit import api

        async def go() -> str:
            async with api.LiveKitAPI(url=self.double.http_url, api_key=self.double.api_key,
                                      api_secret=self.double.api_secret) as lk:
                d = await lk.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name=agent_name, room=room))
                return d.id

        asyncio.run(go())
        ev = self.double.events.wait_for_sync("job_offered", lambda e: e["room"] == room, timeout=15)
        self.dispatch_of[ev["job"]] = ev["dispatch"]
        return ev["job"]

    def trace_id(self, job_id: str) -> str:
        """The job's trace id: derived from its dispatch id (every job here is dispatched explicitly)."""
        return format(trace_id_for(job_id, self.dispatch_of.get(job_id, "")), "032x")

    def markers(self, what: str | None = None) -> list[dict[str, Any]]:
        rows = [json.loads(x) for x in self.markers_path.read_text().splitlines() if x.strip()]
        return [r for r in rows if what is None or r["what"] == what]

    def trace(self, job_id: str) -> SpanSet:
        return self.rx.spans().trace(self.trace_id(job_id))

    def wait_span(self, job_id: str, name: str, timeout: float = 20.0,
                  predicate: Callable[[SpanRecord], bool] | None = None) -> SpanRecord:
        tid = self.trace_id(job_id)
        return self.rx.wait_for(lambda s: s.trace_id == tid and s.name == name and (predicate is None or predicate(s)),
                                timeout=timeout)

    def worker_log(self) -> str:
        return self.worker.output if self.worker is not None else ""

    def verdict_lines(self, job_id: str) -> list[str]:
        """The diagnosis lines lk_probe logged for the job (its WARNING 'lk_probe: job <id>…')."""
        return [line for line in self.worker_log().splitlines() if f"lk_probe: job {job_id}" in line]


@pytest.fixture
def probe(lk_double: Any, agent_worker: Any, otlp_receiver: Any, otlp_env: dict[str, str], tmp_path: Path) -> Probe:
    return Probe(lk_double, agent_worker, otlp_receiver, otlp_env, tmp_path)
