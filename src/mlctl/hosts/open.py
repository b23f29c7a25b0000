"""Turn what a user typed after ``--host`` into a live Connector.

``local`` means this machine (mlctl running on the GPU box itself); anything
else is a saved host, an ``~/.ssh/config`` alias or a host string, reached
over SSH with the given host-key policy.
"""

from __future__ import annotations

from mlctl.hosts.base import Connector
from mlctl.hosts.known_hosts import HostKeyPolicy

LOCAL = "local"


def open_connector(
    spec: str, *, host_key_policy: HostKeyPolicy = "accept-new", connect_timeout: float = 10.0
) -> Connector:
    """Return a connected Connector for ``spec``; close it when done.

    Raises UsageError for a malformed host string and ConnectError when the
    host cannot be reached or refuses us.
    """
    if spec == LOCAL:
        from mlctl.hosts.local import LocalConnector

        return LocalConnector()
    from mlctl.hosts import saved
    from mlctl.hosts.ssh import ConnectOptions, connect

    target = saved.resolve(spec)
    return connect(
        target, ConnectOptions(host_key_policy=host_key_policy, connect_timeout=connect_timeout)
    )
