"""A private network namespace where the real ``livekit`` SDK (libwebrtc) and the double do real ICE on loopback.

libwebrtc ignores loopback interfaces ("Machine has no networks; no ports will be allocated"), so a namespace with
only ``lo`` gathers nothing. This module configures a fresh, private namespace with ``lo`` up plus a veth pair that
exists only inside it, ``127.0.0.2/32`` on ``lkd0`` and IPv6 disabled on both ends: libwebrtc then sees
``Net[lkd0:127.0.0.x/32]`` and gathers 127.0.0.2, the double gathers 127.0.0.1, and no packet can leave the namespace.
The namespace dies with the process that created it; nothing is left behind on the host.

Usage::

    python -m lk_probe.testing.netns -- python -m pytest tests/testing -q
    python -m lk_probe.testing.netns --hosts other.livekit.cloud=127.0.0.1 -- CMD ...

By default (``--no-hosts`` to skip) and with ``--hosts`` it also unshares the mount namespace and bind-mounts a
private ``/etc/hosts`` with ``lkp-test[-1..5].livekit.cloud`` (or the given names) on 127.0.0.1 (so a
``ws://<name>.livekit.cloud:PORT`` URL makes the SDK run its LiveKit-Cloud region fetch against the double, over
plain HTTP because ``ws://`` maps to ``http://``).

As root this uses ``unshare --net``; otherwise ``unshare --user --map-root-user --net`` (user namespaces needed).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from typing import Sequence

VETH = "lkd0"
VETH_PEER = "lkd1"
VETH_ADDR = "127.0.0.2"
ENV_MARK = "LK_PROBE_IN_NETNS"
# LiveKit-Cloud-looking names (the SDK caches region lists per host, so tests use one name each)
DEFAULT_HOSTS = {"lkp-test.livekit.cloud": "127.0.0.1",
                 **{f"lkp-test-{i}.livekit.cloud": "127.0.0.1" for i in range(1, 6)}}

_SIOCGIFADDR = 0x8915


def cloud_host(n: int) -> str:
    """``lkp-test-<n>.livekit.cloud`` if it resolves to loopback here (inside this module's namespace, which maps
    it); otherwise the calling pytest test is skipped. One host per test: livekit 1.1.21+ caches region lists per
    host."""
    import socket

    import pytest

    name = f"lkp-test-{n}.livekit.cloud"
    try:
        if socket.gethostbyname(name).startswith("127."):
            return name
    except OSError:
        pass
    pytest.skip(f"{name} does not resolve to loopback here (python -m lk_probe.testing.netns maps it)")


def _iface_ipv4(name: str) -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            raw = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        return socket.inet_ntoa(raw[20:24])
    except OSError:
        return None


def in_private_netns() -> bool:
    """True inside a namespace configured by this module (``lkd0`` with 127.0.0.2 exists)."""
    return _iface_ipv4(VETH) == VETH_ADDR


def _interfaces() -> list[str]:
    # not /sys/class/net: sysfs shows the namespace of whoever mounted it, if_nameindex() the current one
    return sorted(name for _, name in socket.if_nameindex())


def _run(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")


def _sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        pass  # IPv6 compiled out: nothing to disable


def setup_current_netns() -> None:
    """Configure ``lo`` + the veth pair in the current, already unshared, network namespace.

    Refuses to touch a namespace that has other interfaces than ``lo`` (i.e. the host's), so it can never
    reconfigure the machine's real network.
    """
    if in_private_netns():
        return
    ifaces = _interfaces()
    foreign = [i for i in ifaces if i not in ("lo", VETH, VETH_PEER)]
    if foreign:
        raise RuntimeError(f"refusing to configure a network namespace that has interfaces {foreign}: "
                           "setup_current_netns() is only for a fresh namespace (unshare --net)")
    if not shutil.which("ip"):
        raise RuntimeError("the `ip` command (iproute2) is needed to configure the namespace")
    _run("ip", "link", "set", "lo", "up")
    if VETH not in ifaces:
        _run("ip", "link", "add", VETH, "type", "veth", "peer", "name", VETH_PEER)
    for dev in (VETH, VETH_PEER):
        _sysctl(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6", "1")
    _run("ip", "addr", "add", f"{VETH_ADDR}/32", "dev", VETH)
    _run("ip", "link", "set", VETH, "up")
    _run("ip", "link", "set", VETH_PEER, "up")
    if not in_private_netns():
        raise RuntimeError(f"configured {VETH} but it has no {VETH_ADDR}")


def _setup_hosts(hosts: dict[str, str]) -> None:
    """In a private mount namespace: bind-mount an /etc/hosts that also maps ``hosts``."""
    try:
        with open("/etc/hosts") as f:
            base = f.read()
    except OSError:
        base = "127.0.0.1 localhost\n"
    fd, path = tempfile.mkstemp(prefix="lkp-hosts-")
    with os.fdopen(fd, "w") as f:
        f.write(base.rstrip("\n") + "\n" + "".join(f"{ip} {name}\n" for name, ip in hosts.items()))
    os.chmod(path, 0o644)
    try:
        _run("mount", "--make-rprivate", "/")
        _run("mount", "--bind", path, "/etc/hosts")
    finally:
        os.unlink(path)  # the bind mount keeps the inode alive


def _unshare_prefix(mount: bool) -> list[str]:
    if not shutil.which("unshare"):
        raise RuntimeError("the `unshare` command (util-linux) is needed for a private network namespace")
    cmd = ["unshare", "--net"]
    if os.geteuid() != 0:
        cmd[1:1] = ["--user", "--map-root-user"]
    if mount:
        cmd.append("--mount")
    return cmd


def _inner_cmd(argv: Sequence[str], hosts: dict[str, str] | None) -> list[str]:
    cmd = [sys.executable, "-m", "lk_probe.testing.netns", "--inner"]
    for name, ip in (hosts or {}).items():
        cmd += ["--hosts", f"{name}={ip}"]
    return cmd + ["--", *argv]


def run_in_netns(argv: Sequence[str], *, hosts: dict[str, str] | None = DEFAULT_HOSTS) -> int:
    """Run ``argv`` in a fresh private namespace (configured as above); return its exit code.

    ``hosts`` (default: ``lkp-test.livekit.cloud`` -> 127.0.0.1) adds a private mount namespace with those names in
    ``/etc/hosts``; pass ``None`` for a network namespace only."""
    if not argv:
        raise ValueError("no command")
    if in_private_netns() and not hosts:
        return subprocess.call(list(argv))
    return subprocess.call(_unshare_prefix(bool(hosts)) + _inner_cmd(argv, hosts))


def reexec_in_netns(argv: Sequence[str], *, hosts: dict[str, str] | None = DEFAULT_HOSTS) -> None:
    """Replace this process with ``argv`` running in a fresh private namespace (never returns on success)."""
    if not argv:
        raise ValueError("no command")
    sys.stdout.flush()
    sys.stderr.flush()
    cmd = _unshare_prefix(bool(hosts)) + _inner_cmd(argv, hosts)
    os.execvp(cmd[0], cmd)


def _inner(argv: list[str], hosts: dict[str, str]) -> int:
    setup_current_netns()
    if hosts:
        try:
            _setup_hosts(hosts)
        except (RuntimeError, OSError) as e:  # no mount namespace: the names just do not resolve
            print(f"lk_probe.testing.netns: no private /etc/hosts ({e})", file=sys.stderr)
            hosts = {}
    env = dict(os.environ)
    env[ENV_MARK] = "1"
    if hosts:
        env["LK_PROBE_NETNS_HOSTS"] = ",".join(hosts)
    os.execvpe(argv[0], argv, env)
    return 127  # pragma: no cover


def main(args: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if args is None else args)
    inner = False
    hosts: dict[str, str] = {}
    default_hosts = True
    while args and args[0] != "--":
        a = args.pop(0)
        if a == "--inner":
            inner = True
        elif a == "--no-hosts":
            default_hosts = False
        elif a == "--hosts" and args:
            name, _, ip = args.pop(0).partition("=")
            hosts[name] = ip or "127.0.0.1"
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        else:
            print(f"unknown option {a!r}; usage: python -m lk_probe.testing.netns [--hosts NAME=IP] -- CMD ...",
                  file=sys.stderr)
            return 2
    if args and args[0] == "--":
        args.pop(0)
    if not args:
        print("usage: python -m lk_probe.testing.netns [--hosts NAME=IP] -- CMD ...", file=sys.stderr)
        return 2
    if inner:
        return _inner(args, hosts)
    if not hosts and default_hosts:
        hosts = dict(DEFAULT_HOSTS)
    try:
        return run_in_netns(args, hosts=hosts or None)
    except (RuntimeError, OSError) as e:
        print(f"lk_probe.testing.netns: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
