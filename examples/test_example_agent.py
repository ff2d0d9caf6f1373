"""An example user test: run YOUR agent file against the lk_probe double and assert on its phases.

The fixtures come from lk_probe's pytest plugin (installed with the package): ``lk_double`` (the LiveKit server
double), ``agent_worker`` (a real worker process), ``otlp_receiver`` / ``otlp_env`` (a real OTLP receiver and the
OTEL_* variables that point the worker at it). Real ICE needs ``pytest --lk-netns`` (a private network namespace).
"""

import asyncio
from pathlib import Path

import pytest
from livekit import api

AGENT = Path(__file__).parent / "agent.py"


async def dispatch(double, agent_name: str, room: str) -> None:
    async with api.LiveKitAPI(url=double.http_url, api_key=double.api_key, api_secret=double.api_secret) as lk:
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name=agent_name, room=room))


@pytest.mark.e2e
@pytest.mark.lk_netns
def test_agent_joins_quickly_even_when_the_first_signal_connect_stalls(lk_double, agent_worker, otlp_receiver,
                                                                        otlp_env):
    # the first signal WebSocket upgrade hangs 8 s: the SDK gives up after 5 s and retries
    lk_double.faults.add("signal_upgrade_delay", delay=8.0, count=1)
    worker = agent_worker(AGENT, agent_name="example-agent", env={**otlp_env, "AGENT_NAME": "example-agent",
                                                                         "LOAD_THRESHOLD": "inf"})
    worker.wait_registered(60)
    asyncio.run(dispatch(lk_double, "example-agent", "support-call"))

    job = otlp_receiver.wait_for_phase("job", timeout=60)
    spans = otlp_receiver.spans().trace(job.trace_id)
    attempts = spans.phases("rtc.attempt")
    assert [a.error for a in attempts] == [True, False]  # attempt 1 timed out, attempt 2 joined
    assert attempts[0].attributes["error.type"] == "timeout"
    assert 4.5 < attempts[0].duration < 6.5  # the SDK's 5 s signal connect timeout
    assert spans.phase("job.assignment").duration < 0.5
    # the joined attempt shows its ICE / peer-connection phase too, although this job ends right after connecting:
    # the PC's records often reach the job process after its room closed (livekit's FFI hands its log over in
    # batches). livekit 1.1.2 waits for its subscriber PC, later versions for the publisher
    from livekit.rtc import __version__ as rtc_version

    primary = "subscriber" if tuple(int(x) for x in rtc_version.split(".")[:3]) < (1, 1, 3) else "publisher"
    pc = otlp_receiver.wait_for(lambda s: s.trace_id == job.trace_id and s.name == "rtc.pc", timeout=10)
    assert pc.parent_id == attempts[1].span_id and pc.attributes["lk_probe.pc"] == primary and not pc.error
    assert attempts[1].start_ns <= pc.start_ns <= pc.end_ns <= attempts[1].end_ns
