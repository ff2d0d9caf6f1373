"""``lk-probe canary`` and ``lk-probe watch`` as a user runs them: a subprocess against the server double."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import join_agent


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.Popen:
    full = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "LK_PROBE_STRICT": "1",
            **env}
    for k in [k for k, v in full.items() if v is None]:
        del full[k]
    return subprocess.Popen([sys.executable, "-m", "lk_probe", *args], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    assert "Traceback" not in out + err and "lk_probe internal error" not in err, (out, err)
    return p.returncode, out, err


@pytest.fixture
def lk_env(lk_double) -> dict[str, str]:
    return {"LIVEKIT_URL": lk_double.url, "LIVEKIT_API_KEY": lk_double.api_key,
            "LIVEKIT_API_SECRET": lk_double.api_secret}


def test_canary_exits_0_when_the_agent_joined_and_cleans_up(lk_double, lk_env):
    p = run(["canary", "--agent", "cli-agent", "--timeout", "20"], lk_env)
    ev = lk_double.events.wait_for_sync("dispatch_created", lambda e: e["agent_name"] == "cli-agent", timeout=30)
    assert ev["room"].startswith("lk-probe-canary-")
    join_agent(lk_double, ev["room"], "agent-cli")
    code, out, err = finish(p)
    assert code == 0, (out, err)
    lines = out.splitlines()
    assert lines[0].startswith("dispatch.create") and ev["dispatch"] in lines[0]
    assert lines[1].startswith("dispatch.wait") and " joined " in lines[1] and "agent agent-cli" in lines[1]
    assert lines[2].startswith("cleanup") and "scratch room" in lines[2]
    assert lk_double.events.of_kind("dispatch_deleted", lambda e: e["dispatch"] == ev["dispatch"])
    assert lk_double.events.of_kind("room_deleted", lambda e: e["room"] == ev["room"])


def test_canary_exits_1_when_no_agent_joined(lk_double, lk_env):
    code, out, err = finish(run(["canary", "--agent", "nobody", "--room", "kept-room", "--timeout", "1.5"], lk_env))
    assert code == 1, (out, err)
    assert "never_joined" in out and "job state JS_PENDING" in out
    assert "scratch room" not in out and "kept-room" in lk_double.call(lambda: set(lk_double.rooms))


@pytest.mark.parametrize("case", ["bad_secret", "unreachable", "missing", "bad_url"])
def test_canary_exits_2_on_bad_configuration_with_one_line(lk_double, lk_env, case, unused_tcp_port):
    env = dict(lk_env)
    if case == "bad_secret":
        env["LIVEKIT_API_SECRET"] = "wrong-secret-wrong-secret-wrong-secret"
    elif case == "unreachable":
        env["LIVEKIT_URL"] = f"ws://127.0.0.1:{unused_tcp_port}"
    elif case == "missing":
        env["LIVEKIT_API_KEY"] = ""
    else:
        env["LIVEKIT_URL"] = "127.0.0.1:7880"
    code, out, err = finish(run(["canary", "--agent", "a", "--timeout", "5"], env))
    assert code == 2 and out == "", (out, err)
    lines = [x for x in err.splitlines() if x.strip() and "InsecureKeyLength" not in x and "return self._jws" not in x]
    assert len(lines) == 1 and lines[0].startswith("lk-probe canary: "), err
    expect = {"bad_secret": "refused the credentials", "unreachable": "cannot reach the LiveKit API",
              "missing": "set LIVEKIT_API_KEY", "bad_url": "LIVEKIT_URL must start with"}[case]
    assert expect in lines[0], lines


def test_watch_follows_a_dispatch_made_elsewhere(lk_double, lk_env):
    d = lk_double.call(lambda: lk_double.agent.create_dispatch("w-cli", "elsewhere"))
    join_agent(lk_double, "w-cli", "agent-elsewhere")
    code, out, err = finish(run(["watch", "--room", "w-cli", "--dispatch", d.id, "--timeout", "10"], lk_env))
    assert code == 0 and " joined " in out and d.id in out, (out, err)
    # without the dispatch id: the room's newest dispatch of that agent
    code, out, err = finish(run(["watch", "--room", "w-cli", "--agent", "elsewhere", "--timeout", "10"], lk_env))
    assert code == 0 and d.id in out, (out, err)


def test_watch_reports_a_phantom_dispatch_and_bad_credentials(lk_double, lk_env):
    lk_double.faults.add("dispatch_phantom", identity="ghost")
    d = lk_double.call(lambda: lk_double.agent.create_dispatch("w-ghost", "ghost"))
    code, out, err = finish(run(["watch", "--room", "w-ghost", "--dispatch", d.id, "--timeout", "1.5"], lk_env))
    assert code == 1 and "state_mismatch" in out and "JS_RUNNING" in out, (out, err)
    env = {**lk_env, "LIVEKIT_API_SECRET": "wrong-secret-wrong-secret-wrong-secret"}
    code, out, err = finish(run(["watch", "--room", "w-ghost", "--dispatch", d.id, "--timeout", "5"], env))
    assert code == 2 and "api_error" in out and "unauthenticated" in out, (out, err)
