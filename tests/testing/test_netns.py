"""The private network namespace helper: real namespaces are created (root or user namespaces needed)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from lk_probe.testing import netns


def _can_unshare() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    cmd = ["unshare", "--net", "true"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--net",
                                                                   "true"]
    return subprocess.run(cmd, capture_output=True).returncode == 0


needs_unshare = pytest.mark.skipif(not _can_unshare(), reason="cannot create a network namespace here "
                                   "(needs root or unprivileged user namespaces, util-linux and iproute2)")

PY = sys.executable


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "lk_probe.testing.netns", *args], capture_output=True, text=True,
                          timeout=timeout)


@needs_unshare
def test_cli_runs_command_inside_and_propagates_exit_code():
    code = ("from lk_probe.testing import netns, _webrtc; import os, socket, sys; "
            "names = sorted(n for _, n in socket.if_nameindex()); "
            "ok = netns.in_private_netns() and os.environ.get('LK_PROBE_IN_NETNS') == '1' "
            "and names == ['lkd0', 'lkd1', 'lo']; "
            "print(names); sys.exit(7 if ok else 1)")
    r = _run("--", PY, "-c", code)
    assert r.returncode == 7, (r.stdout, r.stderr)


@needs_unshare
def test_ipv6_disabled_on_veth_and_hosts_mapped():
    r = _run("--", "sh", "-c", "cat /proc/sys/net/ipv6/conf/lkd0/disable_ipv6 /proc/sys/net/ipv6/conf/lkd1/"
                               "disable_ipv6; getent hosts lkp-test.livekit.cloud")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[:2] == ["1", "1"]
    assert lines[2] == "127.0.0.1" and "lkp-test.livekit.cloud" in lines


@needs_unshare
def test_nothing_left_behind_on_the_host():
    before = sorted(n for _, n in socket.if_nameindex())
    with open("/etc/hosts") as f:
        hosts_before = f.read()
    assert _run("--", "true").returncode == 0
    assert sorted(n for _, n in socket.if_nameindex()) == before
    with open("/etc/hosts") as f:
        assert f.read() == hosts_before


@needs_unshare
def test_no_hosts_option_and_failures():
    if not os.environ.get("LK_PROBE_NETNS_HOSTS"):  # (inside our namespace the outer /etc/hosts has the name)
        r = _run("--no-hosts", "--", "sh", "-c", "getent hosts lkp-test.livekit.cloud || exit 5")
        assert r.returncode == 5
    assert _run("--", "sh", "-c", "exit 3").returncode == 3
    assert _run().returncode == 2  # no command
    assert netns.run_in_netns([PY, "-c", "import sys; sys.exit(4)"], hosts=None) == 4


def test_refuses_to_configure_a_namespace_with_real_interfaces():
    names = [n for _, n in socket.if_nameindex()]
    if netns.in_private_netns() or set(names) <= {"lo", "lkd0", "lkd1"}:
        pytest.skip("this process already runs in a private namespace")
    with pytest.raises(RuntimeError, match="refusing"):
        netns.setup_current_netns()
    assert not netns.in_private_netns()


def test_in_private_netns_matches_environment():
    inside = os.environ.get("LK_PROBE_IN_NETNS") == "1"
    assert netns.in_private_netns() is inside
