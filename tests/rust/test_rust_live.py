"""Live: a real ``livekit.rtc.Room`` with the bridge installed against the server double (real ICE in the private
network namespace), with faults. The live machine's phases must be what the scenario implies, and replaying the
captured sequence must give exactly the same sink calls. Skipped outside the namespace:

    python -m lk_probe.testing.netns -- python -m pytest tests/rust -q
"""

from __future__ import annotations

import pytest

from capture import capture
from lk_probe.testing import netns
from replay import normalized, replay_rows, tree
from test_rust_replay import check_real

pytestmark = [pytest.mark.lk_netns, pytest.mark.rtc, pytest.mark.skipif(not netns.in_private_netns(),
                                                    reason="needs the private network namespace (real ICE)")]


def _cloud_host_is_local() -> bool:
    import socket

    from capture import CLOUD_HOST

    try:
        return socket.gethostbyname(CLOUD_HOST) == "127.0.0.1"
    except OSError:
        return False


@pytest.mark.parametrize("scenario", ["signal_timeout_once", "http_503_once", "join_delay", "leave_resume",
                                      "refuse_resume", "leave_reconnect", "cloud_region_fallback"])
async def test_live_scenario(scenario):
    if scenario.startswith("cloud") and not _cloud_host_is_local():
        pytest.skip("needs `python -m lk_probe.testing.netns --hosts lkp-test.livekit.cloud=127.0.0.1 -- ...`")
    meta, rows, live_calls = await capture(scenario)
    sink, m = replay_rows(meta, rows)
    from replay import calls_of

    assert normalized(calls_of(sink)) == normalized(live_calls)
    assert m.open_count() == 0
    check_real(tree(sink), sink, scenario, meta["livekit"])
