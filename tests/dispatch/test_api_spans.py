"""The dispatcher's livekit.api calls as CLIENT spans: the real livekit.api client against the server double."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from livekit import api
from opentelemetry import trace

from lk_probe import _ids

from .conftest import lkapi


async def test_create_list_delete_dispatch_are_client_spans(capspans, lk_double):
    tracer = capspans.provider.get_tracer("backend")
    async with lkapi(lk_double) as lk:
        with tracer.start_as_current_span("POST /start-session") as handler:
            d = await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="support", room="sales-call"))
        listed = await lk.agent_dispatch.list_dispatch("sales-call")
        got = await lk.agent_dispatch.get_dispatch(d.id, "sales-call")
        await lk.agent_dispatch.delete_dispatch(d.id, "sales-call")
    assert [x.id for x in listed] == [d.id] and got is not None
    spans = capspans.spans
    create = spans.phase("dispatch.create")
    a = create.attributes
    assert create.kind == "CLIENT" and create.status_code != "ERROR"
    assert a["lk.dispatch_id"] == d.id and a["lk.agent_name"] == "support"
    assert a["lk.pii.room_name"] == "sales-call" and a["lk.job_id"] == d.state.jobs[0].id
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == lk_double.port
    assert a["rpc.method"] == "CreateDispatch" and a["lk_probe.outcome"] == "ok"
    # the root of the dispatch's trace (ids from the dispatch id), linked to the handler's span
    assert create.trace_id == format(_ids.dispatch_trace_id_for(d.id), "032x") and create.parent_id is None
    assert create.span_id == format(_ids.dispatch_span_id_for(d.id), "016x")
    hsc = handler.get_span_context()
    assert [(lk_.trace_id, lk_.span_id) for lk_ in create.links] == [
        (format(hsc.trace_id, "032x"), format(hsc.span_id, "016x"))]
    lists = spans.named("dispatch.list")
    assert [s.attributes["lk_probe.dispatch.count"] for s in lists] == [1, 1]
    assert lists[1].attributes["lk.dispatch_id"] == d.id
    delete = spans.phase("dispatch.delete")
    assert delete.attributes["lk.dispatch_id"] == d.id and delete.kind == "CLIENT"
    assert not spans.named("dispatch.wait")  # the watch is opt-in


async def test_create_room_with_agents(capspans, lk_double):
    async with lkapi(lk_double) as lk:
        room = await lk.room.create_room(api.CreateRoomRequest(
            name="with-agents", agents=[api.RoomAgentDispatch(agent_name="stt-agent", metadata="m")]))
        plain = await lk.room.create_room(api.CreateRoomRequest(name="plain"))
    first, second = capspans.spans.named("room.create")
    assert first.kind == "CLIENT"
    assert first.attributes["lk.room_sid"] == room.sid and first.attributes["lk.pii.room_name"] == "with-agents"
    assert first.attributes["lk_probe.dispatch.agents"] == 1 and first.attributes["lk.agent_name"] == "stt-agent"
    assert second.attributes["lk_probe.dispatch.agents"] == 0 and "lk.agent_name" not in second.attributes
    assert second.attributes["lk.room_sid"] == plain.sid


@pytest.mark.parametrize("case,error_type,status", [("bad_secret", "unauthenticated", 401),
                                                    ("unreachable", "refused", None)])
async def test_failed_calls_carry_the_twirp_code_or_the_transport_failure(capspans, lk_double, case, error_type,
                                                                          status, unused_tcp_port):
    kw = {"api_secret": "not-the-secret"} if case == "bad_secret" else {"url": f"http://127.0.0.1:{unused_tcp_port}"}
    async with lkapi(lk_double, **kw) as lk:
        with pytest.raises(Exception) as exc:
            await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="a", room="r"))
    if status:
        assert exc.value.code == error_type  # the user still gets livekit.api's own exception
    span = capspans.phase("dispatch.create")
    assert span.status_code == "ERROR" and span.attributes["error.type"] == error_type
    assert span.attributes.get("http.response.status_code") == status
    assert "lk.dispatch_id" not in span.attributes
    assert span.trace_id != format(trace.INVALID_TRACE_ID, "032x")


def test_works_in_a_process_without_livekit_agents(lk_double, tmp_path):
    """A backend that only dispatches, where livekit.agents cannot be imported at all (as when it is not
    installed): install() traces its livekit.api calls, nothing fails inside lk_probe."""
    script = tmp_path / "backend.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys

        class NoAgents:
            def find_spec(self, name, path=None, target=None):
                if name == "livekit.agents" or name.startswith("livekit.agents."):
                    raise ImportError("livekit-agents is not installed here")
                return None

        sys.meta_path.insert(0, NoAgents())
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import lk_probe
        from livekit import api

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        lk_probe.install(tracer_provider=provider)

        async def main():
            async with api.LiveKitAPI(url={lk_double.http_url!r}, api_key={lk_double.api_key!r},
                                      api_secret={lk_double.api_secret!r}) as lk:
                await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="x", room="r"))

        asyncio.run(main())
        names = [s.name for s in exporter.get_finished_spans()]
        agents = sorted(m for m in sys.modules if m.startswith("livekit.agents"))
        print("SPANS", names, "AGENTS", agents)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env={**__import__("os").environ, "LK_PROBE_STRICT": "1"})
    assert out.returncode == 0, out.stderr
    assert "SPANS ['dispatch.create'] AGENTS []" in out.stdout, (out.stdout, out.stderr)
    assert "lk_probe internal error" not in out.stderr
