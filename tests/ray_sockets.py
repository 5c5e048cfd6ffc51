"""The TCP sockets that this test process and the processes it started (Ray's among them) listen on."""

from __future__ import annotations

import ipaddress

import ray  # noqa: F401  puts on sys.path the psutil that Ray ships (ray/thirdparty_files)


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def listening_sockets() -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of this process and its
    descendants (Ray's GCS, raylet and agents, and the workers the raylet started)."""
    import psutil

    me = psutil.Process()
    sockets = []
    for process in [me, *me.children(recursive=True)]:
        try:
            name, connections = process.name(), process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:  # a worker that exited meanwhile
            continue
        sockets += [(name, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]
    return sockets


def assert_ray_listens_on_loopback_only() -> None:
    sockets = listening_sockets()
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # Ray's own processes were seen
    off_loopback = [socket for socket in sockets if not is_loopback(socket[1])]
    assert not off_loopback, off_loopback

