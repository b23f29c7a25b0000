"""What a tunnel holds on the host besides its forwarded channels, and how it retries.

``HostSession`` wraps the tunnel's current connector. Over SSH it holds one
session channel with a pty running ``sleep`` for as long as the tunnel lives:
sshd turns Nagle off on its side of the connection only for sessions with a
terminal, and without it every small response waits ~40 ms for a delayed ACK
(FACTS.md, "The tunnel latency trap"; OpenSSH's equivalent is
``ssh -tt -L … 'sleep …'``). It also says when the connection is dead: the
transport closed, or no answer to a keepalive request within a deadline (a
network that silently drops packets, a laptop that slept). Over a local
connector there is nothing to hold and nothing that can die.

``Backoff`` gives the jittered, doubling waits between reconnect attempts, and
``refusal`` tells a refused connection (changed host key, unknown key under
the strict policy, a login the host rejects: retrying soon will not help) from
one that may work on the next try.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING

from mlctl.errors import ConnectError
from mlctl.hosts.base import Connector

if TYPE_CHECKING:
    import paramiko

PTY_COMMAND = "sleep 2147483647"

log = logging.getLogger("mlctl.tunnel")

# Why a ConnectError means "refused" rather than "not reachable now": the one table of
# these rules, matched against the messages of hosts/known_hosts.py and hosts/ssh.py.
_REFUSALS: tuple[tuple[str, str], ...] = (
    ("has CHANGED", "host key changed"),
    ("policy is strict", "host key unknown"),
    ("authentication refused", "authentication refused"),
    ("needs more than a key", "authentication refused"),
)


def refusal(exc: BaseException) -> str | None:
    """Return why ``exc`` is a refusal that retrying soon will not fix, or None."""
    if not isinstance(exc, ConnectError):
        return None
    for marker, reason in _REFUSALS:
        if marker in exc.message:
            return reason
    return None


class Backoff:
    """Waits between reconnect attempts: ``first`` doubling up to ``most``, each ±20 %."""

    def __init__(self, first: float = 0.2, most: float = 5.0) -> None:
        self.first = first
        self.most = most
        self._next = first

    def next(self) -> float:
        """Return the next wait in seconds and double the one after it."""
        wait = self._next
        self._next = min(self._next * 2, self.most)
        return wait * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        """Start again from ``first``."""
        self._next = self.first


class HostSession:
    """One connector in use by a tunnel, with its pty keep-alive session and liveness checks.

    ``owned``: the tunnel opened this connector (on a reconnect) and closes it;
    otherwise the caller that passed it in closes it.
    """

    def __init__(
        self,
        conn: Connector,
        *,
        owned: bool,
        keepalive_interval: float = 5.0,
        keepalive_timeout: float = 15.0,
    ) -> None:
        self.conn = conn
        self.owned = owned
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        transport = getattr(conn, "transport", None)
        self.transport: paramiko.Transport | None = transport
        self.pty: paramiko.Channel | None = None
        self._probe: threading.Thread | None = None
        self._probe_started = 0.0
        self._probe_sent = time.monotonic()
        self._pty_retry_at = 0.0

    @property
    def is_ssh(self) -> bool:
        """True when this is an SSH transport (something to hold and to watch)."""
        return self.transport is not None

    @property
    def holds_pty(self) -> bool:
        """True when the pty keep-alive session is open."""
        return self.pty is not None and not self.pty.closed and bool(self.pty.active)

    def open(self) -> None:
        """Open the pty keep-alive session (no-op without SSH).

        Raises ConnectError when the connection is dead. A host that refuses a
        pty is logged (small requests will be slower) and is not an error.
        """
        if self.transport is None:
            return
        import paramiko

        if not self.transport.is_active():
            raise ConnectError(f"the SSH connection to {self.conn.description} is closed")
        chan: paramiko.Channel | None = None
        try:
            chan = self.transport.open_session(timeout=10)
            chan.get_pty(term="dumb", width=80, height=24)
            chan.exec_command(PTY_COMMAND)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if chan is not None:
                chan.close()
            if not self.transport.is_active():
                raise ConnectError(
                    f"the SSH connection to {self.conn.description} closed: {exc}"
                ) from exc
            log.warning(
                "tunnel: %s refused a pty session (%s); without it small requests may "
                "wait ~40 ms each",
                self.conn.description,
                exc,
            )
            self._pty_retry_at = time.monotonic() + 60.0
            return
        self.pty = chan

    def dead_reason(self) -> str | None:
        """Return why the connection is dead, or None while it looks alive.

        Call it often (every fraction of a second): it also reopens a pty
        session that ended on its own and sends the periodic keepalive probe.
        """
        transport = self.transport
        if transport is None:
            return None
        if not transport.is_active():
            return "the SSH connection closed"
        now = time.monotonic()
        probe = self._probe
        if probe is not None:
            if not probe.is_alive():
                self._probe = None
            elif now - self._probe_started > self.keepalive_timeout:
                return f"no answer to an SSH keepalive for {self.keepalive_timeout:g} s"
        if self._probe is None and now - self._probe_sent >= self.keepalive_interval:
            self._probe_sent = self._probe_started = now
            self._probe = threading.Thread(
                target=_keepalive, args=(transport,), name="mlctl-tunnel-probe", daemon=True
            )
            self._probe.start()
        pty_ended = self.pty is not None and self.pty.closed
        if pty_ended or (self.pty is None and now > self._pty_retry_at):
            # The sleep ended (killed on the host?) while the connection lives: hold a new one.
            self.pty = None
            self._pty_retry_at = now + 5.0
            try:
                self.open()
            except ConnectError as exc:
                return exc.message
        return None

    def close(self) -> None:
        """Close the pty session, and the connector when the tunnel owns it."""
        if self.pty is not None:
            self.pty.close()
        if self.owned:
            try:
                self.conn.close()
            except Exception as exc:  # closing a dead connection must not raise out of stop()
                log.debug("tunnel: closing %s: %s", self.conn.description, exc)
        probe = self._probe
        if probe is not None:
            # Returns once the answer comes or the transport is closed.
            probe.join(1.0 if self.owned else 0.5)

    def close_dead(self) -> None:
        """Close a connection found dead, whoever opened it (its sockets and jump hops)."""
        self.owned = True
        self.close()


def _keepalive(transport: paramiko.Transport) -> None:
    # sshd answers an unknown global request with a failure: any answer means it is alive.
    # global_request returns when the answer comes or the transport closes.
    try:
        transport.global_request("keepalive@openssh.com", wait=True)
    except Exception as exc:  # a dead transport shows up in is_active()
        log.debug("tunnel keepalive: %s", exc)
