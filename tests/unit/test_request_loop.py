"""RequestLoop with socketpairs and fakes of paramiko's Transport and Channel (no SSH)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mlctl.hosts import request_loop
from mlctl.hosts.request_loop import OTHER, READY, TIMEOUT, RequestLoop

pytestmark = pytest.mark.skipif(not request_loop.supported(), reason="POSIX poll/readv only")


class FakeTransport:
    def __init__(self) -> None:
        self.clear_to_send = threading.Event()
        self.clear_to_send.set()
        self.clear_to_send_lock = threading.Lock()
        self.active = True


class FakeChannel:
    """Channel.send's window rules: at most max_packet - 64 bytes a packet."""

    def __init__(self, window: int = 2 << 20, max_packet: int = 32768) -> None:
        self.lock = threading.Lock()
        self.closed = False
        self.eof_sent = False
        self.out_window_size = window
        self.out_max_packet_size = max_packet
        self.remote_chanid = 9

    def _wait_for_send_window(self, size: int) -> int:
        assert self.out_window_size > 0, "would block paramiko's thread"
        size = min(size, self.out_window_size, self.out_max_packet_size - 64)
        self.out_window_size -= size
        return size


class Setup:
    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.payloads: list[bytes] = []
        self.loop = RequestLoop(self.transport, self.payloads.append)
        self.ssh, self.ssh_peer = socket.socketpair()
        self.client, self.user = socket.socketpair()  # the adopted end, the user's end
        self.channel = FakeChannel()

    def wait(self, timeout_ms: int = 2000) -> int:
        return self.loop.wait(self.ssh.fileno(), timeout_ms)

    def adopt(self) -> request_loop.Adopted:
        self.wait(0)  # paramiko's thread has waited here once: the loop is live
        adopted = self.loop.adopt(self.client, self.channel)
        assert adopted is not None
        return adopted

    def sent(self) -> bytes:
        """The data of the CHANNEL_DATA payloads sent so far, checked and joined."""
        out = b""
        for p in self.payloads:
            assert p[0] == 94 and int.from_bytes(p[1:5], "big") == 9
            assert int.from_bytes(p[5:9], "big") == len(p) - 9
            out += p[9:]
        return out

    def close(self) -> None:
        for s in (self.ssh, self.ssh_peer, self.client, self.user):
            s.close()


@pytest.fixture
def setup() -> Iterator[Setup]:
    s = Setup()
    yield s
    s.close()


def test_nothing_is_adopted_before_paramikos_thread_waits_in_the_loop(setup: Setup) -> None:
    assert setup.loop.adopt(setup.client, setup.channel) is None
    assert setup.wait(0) == TIMEOUT
    assert setup.loop.adopt(setup.client, setup.channel) is not None


def test_what_a_client_writes_goes_out_as_channel_data(setup: Setup) -> None:
    setup.adopt()
    setup.user.sendall(b"GET /ping HTTP/1.1\r\n\r\n")
    assert setup.wait() == OTHER  # served a client; the SSH socket has nothing
    assert setup.sent() == b"GET /ping HTTP/1.1\r\n\r\n"
    assert setup.channel.out_window_size == (2 << 20) - 22 and setup.loop.served == 1
    setup.ssh_peer.sendall(b"x")
    assert setup.wait() == READY


def test_more_than_a_packet_is_split_as_paramiko_would(setup: Setup) -> None:
    setup.adopt()
    body = bytes(range(256)) * 200  # 51 200 bytes: two packets of at most 32 704
    setup.user.sendall(body)
    got = b""
    while len(got) < len(body):
        setup.wait()
        got = setup.sent()
    assert got == body and max(len(p) for p in setup.payloads) <= 9 + 32704


def test_end_of_stream_goes_back_to_the_pump(setup: Setup) -> None:
    adopted = setup.adopt()
    setup.user.shutdown(socket.SHUT_WR)
    setup.wait()
    assert adopted.wait(1) and adopted.eof and adopted.data == b"" and adopted.error is None
    assert setup.payloads == []


def test_a_read_error_goes_back_to_the_pump(setup: Setup) -> None:
    class Failing:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def fileno(self) -> int:
            return self.sock.fileno()

        def gettimeout(self) -> None:
            return None

        def recv(self, *_: Any) -> bytes:
            raise ConnectionResetError("reset by peer")

    setup.wait(0)
    adopted = setup.loop.adopt(Failing(setup.client), setup.channel)  # type: ignore[arg-type]
    assert adopted is not None
    setup.user.sendall(b"x")
    setup.wait()
    assert adopted.wait(1) and isinstance(adopted.error, ConnectionResetError)


def test_a_key_exchange_sends_the_socket_back_with_what_was_read(setup: Setup) -> None:
    adopted = setup.adopt()
    with setup.transport.clear_to_send_lock:  # paramiko is starting a key exchange
        setup.user.sendall(b"request")
        setup.wait()
    assert adopted.wait(1) and adopted.data == b"request" and not adopted.eof
    assert setup.payloads == []  # the pump sends it, waiting for the exchange as paramiko does


def test_nothing_is_read_when_it_could_not_be_sent_at_once(setup: Setup) -> None:
    setup.transport.clear_to_send.clear()
    assert setup.loop.adopt(setup.client, setup.channel) is None
    setup.transport.clear_to_send.set()
    setup.channel.out_window_size = 1000  # short: Channel.send would have to wait
    setup.wait(0)
    assert setup.loop.adopt(setup.client, setup.channel) is None
    setup.channel.out_window_size = 1 << 20
    adopted = setup.adopt()
    setup.channel.eof_sent = True  # closing while adopted: handed back unread
    setup.user.sendall(b"still here")
    setup.wait()
    assert adopted.wait(1) and adopted.data == b""
    assert setup.client.recv(100) == b"still here"  # left for the pump to read


def test_release_and_close_hand_sockets_back_at_once(setup: Setup) -> None:
    adopted = setup.adopt()
    threading.Timer(0.1, adopted.release).start()
    assert adopted.wait(5) and not adopted.eof and adopted.error is None
    adopted.release()  # twice is fine
    again = setup.adopt()
    setup.loop.close()
    assert again.wait(1)
    assert setup.loop.adopt(setup.client, setup.channel) is None
    assert setup.loop.handed_back == 2


def test_adopting_wakes_a_waiting_loop(setup: Setup) -> None:
    setup.wait(0)
    results: list[int] = []
    waiting = threading.Thread(target=lambda: results.append(setup.wait(5000)))
    waiting.start()
    time.sleep(0.1)
    started = time.monotonic()
    assert setup.loop.adopt(setup.client, setup.channel) is not None
    waiting.join(5)
    assert results == [OTHER] and time.monotonic() - started < 1.0
    setup.user.sendall(b"now")  # and the next wait includes the new socket
    assert setup.wait() == OTHER and setup.sent() == b"now"


def test_a_release_during_a_send_neither_waits_for_it_nor_reorders(setup: Setup) -> None:
    # The send may be stuck on a silent connection: the watch thread's release must
    # return at once, and the socket goes back only once the bytes read are sent.
    unblock = threading.Event()
    sending = threading.Event()

    def slow_send(payload: bytes) -> None:
        sending.set()
        unblock.wait(5)
        setup.payloads.append(payload)

    setup.loop._send_payload = slow_send
    adopted = setup.adopt()
    setup.user.sendall(b"request")
    serving = threading.Thread(target=setup.wait)
    serving.start()
    assert sending.wait(2)
    started = time.monotonic()
    adopted.release()
    assert time.monotonic() - started < 0.5 and not adopted.handed_back
    unblock.set()
    serving.join(5)
    assert adopted.wait(1) and adopted.data == b"" and setup.sent() == b"request"
