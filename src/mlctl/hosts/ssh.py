"""``SSHConnector``: the Connector protocol over one paramiko transport.

We open the TCP socket ourselves (TCP_NODELAY, SO_KEEPALIVE, connect timeout),
hand it to a ``paramiko.Transport`` that prefers AES-GCM, check the host key by
mlctl's policy (never paramiko's AutoAddPolicy), then try the target's key
files and the ssh-agent. ProxyJump hops are transports whose ``direct-tcpip``
channel becomes the next hop's socket. Every paramiko and socket failure
leaves here as a ``ConnectError`` that says which failure it is.
"""

from __future__ import annotations

import errno
import getpass
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlctl.errors import ConnectError, UsageError
from mlctl.hosts import known_hosts
from mlctl.hosts.base import (
    Command,
    LineSplitter,
    RunResult,
    StreamChannel,
    check_result,
    command_string,
    decode,
    put_text_command,
    read_text_command,
    timeout_error,
)
from mlctl.hosts.target import SshTarget, parse_target, with_identity_files

if TYPE_CHECKING:
    import paramiko

DEFAULT_KEY_FILES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
_GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
_EOF_GRACE = 5.0  # seconds to wait for the output's end after the exit status
_READ_CHUNK = 65536


@dataclass(frozen=True)
class ConnectOptions:
    """How to connect: host key policy, timeouts, which keys to try."""

    host_key_policy: known_hosts.HostKeyPolicy = "accept-new"
    connect_timeout: float = 10.0
    keepalive_interval: int = 15
    use_agent: bool = True
    default_key_files: tuple[str, ...] = DEFAULT_KEY_FILES


# ---------------------------------------------------------------- errors


def _socket_error(exc: OSError, where: str, timeout: float) -> ConnectError:
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(
            f"connection refused by {where}: nothing listens on that port",
            "check the port (rented boxes often use a non-22 port, see the provider's ssh "
            "command) and that sshd runs on the box",
        )
    if isinstance(exc, TimeoutError):
        return ConnectError(
            f"timed out after {timeout:g}s connecting to {where}",
            "check the address and port, that the box is running, and that no firewall "
            "drops the connection",
        )
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return ConnectError(
            f"no route to {where} ({exc.strerror})",
            "check the address and your network (VPN, firewall)",
        )
    return ConnectError(f"cannot connect to {where}: {exc}", "check the address and port")


def _dns_error(host: str, exc: socket.gaierror) -> ConnectError:
    return ConnectError(
        f"DNS failure: cannot resolve host name {host!r} ({exc.strerror})",
        "check the spelling; if it is an ssh_config alias or a saved host, check its "
        "HostName (mlctl hosts list)",
    )


def _lost(where: str, exc: BaseException | None = None) -> ConnectError:
    detail = f": {exc}" if exc else ""
    return ConnectError(
        f"the SSH connection to {where} was lost{detail}",
        "check that the box is still running and reachable, then run the command again",
    )


# ---------------------------------------------------------------- connecting


def _tcp_socket(target: SshTarget, timeout: float) -> socket.socket:
    host, port, where = target.host, target.port, target.display()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _dns_error(host, exc) from exc
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock
    assert last is not None
    raise _socket_error(last, where, timeout) from last


def _prefer(current: tuple[str, ...] | list[str], first: list[str]) -> list[str]:
    head = [x for x in first if x in current]
    return head + [x for x in current if x not in head]


def _quiet_paramiko_logs() -> None:
    # paramiko logs transport errors we re-raise as ConnectError; without a
    # handler Python's last-resort handler would print them to the user too.
    logger = logging.getLogger("paramiko")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def _handshake(
    sock: socket.socket | paramiko.Channel, target: SshTarget, opts: ConnectOptions
) -> paramiko.Transport:
    import paramiko

    _quiet_paramiko_logs()
    where = target.display()
    transport = paramiko.Transport(sock)
    transport.banner_timeout = opts.connect_timeout
    transport.handshake_timeout = opts.connect_timeout
    transport.auth_timeout = opts.connect_timeout
    security = transport.get_security_options()
    security.ciphers = _prefer(list(security.ciphers), list(_GCM))
    pinned = known_hosts.preferred_key_types(known_hosts.known_keys(target.host, target.port))
    wanted = [
        t2 for t in pinned for t2 in (["rsa-sha2-512", "rsa-sha2-256"] if t == "ssh-rsa" else [t])
    ]
    security.key_types = _prefer(list(security.key_types), wanted)
    try:
        transport.start_client(timeout=opts.connect_timeout)
        # start_client may return at its own timeout with the handshake unfinished.
        key = transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        transport.close()
        text = str(exc)
        if (
            "banner" in text.lower()
            or "no existing session" in text.lower()
            or isinstance(exc, TimeoutError)
        ):
            raise ConnectError(
                f"timeout: {where} accepted the TCP connection but sent no SSH banner "
                f"or did not finish the handshake within {opts.connect_timeout:g}s",
                "check that the port is the SSH port (not a web server) and that sshd is not "
                "overloaded (MaxStartups)",
            ) from exc
        raise ConnectError(
            f"the SSH handshake with {where} failed: {text or type(exc).__name__}",
            "check that the port is the SSH port; run ssh -v to compare",
        ) from exc
    try:
        known_hosts.verify(
            target.host, target.port, key.get_name(), key.get_base64(), opts.host_key_policy
        )
    except ConnectError:
        transport.close()
        raise
    transport.set_keepalive(opts.keepalive_interval)
    return transport


def _key_label(path: str, key: paramiko.PKey) -> str:
    return f"{path} ({key.algorithm_name} {key.fingerprint})"


def _try_key(transport: paramiko.Transport, user: str, key: paramiko.PKey, where: str) -> bool:
    import paramiko

    try:
        remaining = transport.auth_publickey(user, key)
    except paramiko.BadAuthenticationType as exc:
        raise ConnectError(
            f"authentication refused by {where}: the server does not accept public keys "
            f"(it allows: {', '.join(exc.allowed_types) or 'nothing'})",
            "mlctl logs in with SSH keys only; enable PubkeyAuthentication on the host",
        ) from exc
    except paramiko.AuthenticationException:
        return False
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise _lost(where, exc) from exc
    if remaining:
        raise ConnectError(
            f"authentication by {where} needs more than a key ({', '.join(remaining)})",
            "mlctl supports key-only logins; use a key that is enough on its own",
        )
    return True


def _try_agent_keys(
    transport: paramiko.Transport,
    user: str,
    agent: paramiko.Agent,
    where: str,
    tried: list[str],
) -> bool:
    try:
        for agent_key in agent.get_keys():
            if _try_key(transport, user, agent_key, where):
                return True
            label = agent_key.comment or agent_key.fingerprint
            tried.append(f"agent key {label} ({agent_key.fingerprint})")
    finally:
        agent.close()
    return False


def _authenticate(transport: paramiko.Transport, target: SshTarget, opts: ConnectOptions) -> None:
    import paramiko

    user = target.user or getpass.getuser()
    where = SshTarget(target.host, target.port, user).display()
    tried: list[str] = []
    files = target.identity_files or opts.default_key_files
    for path in files:
        full = os.path.expanduser(path)
        if not os.path.isfile(full):
            if target.identity_files:
                tried.append(f"{path} (file not found)")
            continue
        try:
            key = paramiko.PKey.from_path(full)
        except paramiko.PasswordRequiredException:
            tried.append(f"{path} (encrypted: add it to the ssh-agent with ssh-add)")
            continue
        except (paramiko.SSHException, OSError, ValueError) as exc:
            tried.append(f"{path} (unreadable: {exc})")
            continue
        if _try_key(transport, user, key, where):
            return
        tried.append(_key_label(path, key))
    if opts.use_agent and os.environ.get("SSH_AUTH_SOCK"):
        try:
            agent = paramiko.Agent()
        except paramiko.SSHException as exc:
            tried.append(f"ssh-agent (unreachable: {exc})")
        else:
            if _try_agent_keys(transport, user, agent, where, tried):
                return
    shown = "; ".join(tried) if tried else "no keys (none given, none in ~/.ssh, no ssh-agent)"
    raise ConnectError(
        f"authentication refused by {where}; keys tried: {shown}",
        f"check the user name ({user}), and that the public key is in that user's "
        "~/.ssh/authorized_keys on the host (providers have a field for it); pass the key "
        "with -i in the ssh command or IdentityFile in ~/.ssh/config",
    )


def _open_hop(
    target: SshTarget, opts: ConnectOptions, via: paramiko.Transport | None
) -> paramiko.Transport:
    if via is None:
        sock: socket.socket | paramiko.Channel = _tcp_socket(target, opts.connect_timeout)
    else:
        sock = _direct_tcpip(via, target.host, target.port, opts.connect_timeout)
    transport = _handshake(sock, target, opts)
    try:
        _authenticate(transport, target, opts)
    except BaseException:
        transport.close()
        raise
    return transport


def _direct_tcpip(
    transport: paramiko.Transport, host: str, port: int, timeout: float | None
) -> paramiko.Channel:
    import paramiko

    where = SshTarget(host, port).display()
    try:
        return transport.open_channel(
            "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout
        )
    except paramiko.ChannelException as exc:
        raise ConnectError(
            f"the jump/remote side could not open {where}: {exc.text} (code {exc.code})",
            "check that something listens at that address and port as seen from the host, "
            "and that it allows TCP forwarding (AllowTcpForwarding)",
        ) from exc
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise _lost(where, exc) from exc


def _jump_targets(target: SshTarget) -> list[SshTarget]:
    if not target.proxy_jump:
        return []
    hops: list[SshTarget] = []
    for spec in target.proxy_jump.split(","):
        try:
            hop = parse_target(spec.strip())
        except UsageError as exc:
            raise ConnectError(
                f"cannot read ProxyJump hop {spec!r} of {target.display()}: {exc.message}",
                "ProxyJump takes [user@]host[:port] hops separated by commas",
            ) from exc
        # A provider's "-i key -J jump" usually means the same key opens both.
        hops.append(with_identity_files(hop, target.identity_files))
    return hops


def connect(target: SshTarget, options: ConnectOptions | None = None) -> SSHConnector:
    """Open, check and authenticate an SSH connection to ``target`` (through its ProxyJump hops).

    Returns a connected SSHConnector; close it when done. Raises ConnectError
    for DNS failure, refusal, timeout, an unknown (strict) or changed host
    key, refused authentication, or a handshake failure.
    """
    opts = options or ConnectOptions()
    hops: list[paramiko.Transport] = []
    try:
        via: paramiko.Transport | None = None
        for hop in _jump_targets(target):
            via = _open_hop(hop, opts, via)
            hops.append(via)
        transport = _open_hop(target, opts, via)
    except BaseException:
        for hop_transport in reversed(hops):
            hop_transport.close()
        raise
    return SSHConnector(transport, target, hops)


# ---------------------------------------------------------------- the connector


class SSHConnector:
    """One authenticated SSH connection; every method reuses its transport."""

    def __init__(
        self,
        transport: paramiko.Transport,
        target: SshTarget,
        hops: list[paramiko.Transport] | None = None,
    ) -> None:
        self._transport = transport
        self._hops = list(hops or [])
        self.target = target

    @property
    def description(self) -> str:
        """Return ``user@host:port`` of the target."""
        return self.target.display()

    @property
    def transport(self) -> paramiko.Transport:
        """Return the underlying paramiko transport (for tunnels that need it)."""
        return self._transport

    def __enter__(self) -> SSHConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _session(self) -> paramiko.Channel:
        import paramiko

        try:
            return self._transport.open_session(timeout=30)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise _lost(self.description, exc) from exc

    def _exec(self, chan: paramiko.Channel, line: str) -> None:
        import paramiko

        try:
            chan.exec_command(line)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            chan.close()
            raise _lost(self.description, exc) from exc

    def _pump(
        self,
        chan: paramiko.Channel,
        line: str,
        timeout: float | None,
        on_out: Callable[[bytes], None],
        on_err: Callable[[bytes], None],
    ) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        status_at: float | None = None
        with selectors.DefaultSelector() as sel:
            sel.register(chan, selectors.EVENT_READ)
            while True:
                while chan.recv_ready():
                    on_out(chan.recv(_READ_CHUNK))
                while chan.recv_stderr_ready():
                    on_err(chan.recv_stderr(_READ_CHUNK))
                # Done when the exit status AND the end of the output are in: sshd sends
                # exit-status when the process exits and may still be reading its last
                # output from the pipe, so the status alone can cut stdout short. A
                # background process still holding the pipe would keep EOF away for
                # ever (OpenSSH's client hangs there); after a grace period we stop.
                if chan.exit_status_ready() and status_at is None:
                    status_at = time.monotonic()
                if (
                    status_at is not None
                    and (
                        chan.eof_received
                        or chan.closed
                        or time.monotonic() - status_at > _EOF_GRACE
                    )
                    and not (chan.recv_ready() or chan.recv_stderr_ready())
                ):
                    break
                wait = 1.0 if deadline is None else deadline - time.monotonic()
                if wait <= 0:
                    chan.close()
                    raise timeout_error(line, timeout or 0.0, self.description)
                sel.select(min(wait, 1.0))
        code = chan.recv_exit_status()
        chan.close()
        if code == -1 and not self._transport.is_active():
            raise _lost(self.description)
        return code

    def run(
        self,
        cmd: Command,
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> RunResult:
        """Run ``cmd`` on the host and return its RunResult.

        ``stdin`` is sent then closed (EOF is sent even without it). Raises
        RemoteError past ``timeout`` or, with ``check``, on a non-zero exit;
        ConnectError when the connection is lost.
        """
        line = command_string(cmd)
        chan = self._session()
        out: list[bytes] = []
        err: list[bytes] = []
        self._exec(chan, line)
        feeder = threading.Thread(target=_feed_stdin, args=(chan, stdin), daemon=True)
        feeder.start()
        code = self._pump(chan, line, timeout, out.append, err.append)
        feeder.join(timeout=5)
        result = RunResult(code, decode(b"".join(out)), decode(b"".join(err)))
        return check_result(result, line, self.description) if check else result

    def run_stream(
        self, cmd: Command, on_line: Callable[[str], None], timeout: float | None = None
    ) -> int:
        """Run ``cmd``, calling ``on_line`` for each line of its stdout and stderr.

        Returns the exit code (-1 when killed by a signal); RemoteError past
        ``timeout``, ConnectError when the connection is lost.
        """
        line = command_string(cmd)
        chan = self._session()
        chan.set_combine_stderr(True)
        # One pipe on the host keeps stdout and stderr lines in the order written.
        self._exec(chan, f"{{ {line}\n}} 2>&1")
        chan.shutdown_write()
        splitter = LineSplitter(on_line)
        code = self._pump(chan, line, timeout, splitter.feed, splitter.feed)
        splitter.finish()
        return code

    def put_text(self, path: str, text: str, mode: int = 0o600) -> None:
        """Write ``text`` to ``path`` on the host atomically with ``mode``; RemoteError if not."""
        self.run(put_text_command(path, mode), stdin=text.encode("utf-8"), check=True)

    def read_text(self, path: str) -> str:
        """Return the content of ``path`` on the host; RemoteError when it cannot be read."""
        return self.run(read_text_command(path), check=True).stdout

    def open_forward(self, remote_host: str, remote_port: int) -> StreamChannel:
        """Open a ``direct-tcpip`` channel to ``remote_host:remote_port`` as the host sees it.

        Raises ConnectError when the host cannot reach it or the connection is lost.
        """
        return _direct_tcpip(self._transport, remote_host, remote_port, timeout=30)

    def close(self) -> None:
        """Close the connection and its jump hops."""
        self._transport.close()
        for hop in reversed(self._hops):
            hop.close()


def _feed_stdin(chan: paramiko.Channel, data: bytes | None) -> None:
    import paramiko

    try:
        if data:
            chan.sendall(data)
        chan.shutdown_write()
    except (paramiko.SSHException, EOFError, OSError):
        pass  # the command exited or the connection dropped; _pump reports it
