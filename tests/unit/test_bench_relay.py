"""The benchmark's relay (tests/benchmarks/bench.py CountingRelay), which `ab.py --delay-ms` puts in
front of sshd to measure round trips: bytes pass intact and counted, each way, and with a delay every
exchange takes a round trip of twice that delay. Over a real loopback socket pair."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench  # noqa: E402


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def _exchange(port: int, payloads: list[bytes]) -> tuple[list[bytes], list[float]]:
    got, took = [], []
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for data in payloads:
            t = time.monotonic()
            c.sendall(data)
            back = b""
            while len(back) < len(data):
                back += c.recv(65536)
            took.append(time.monotonic() - t)
            got.append(back)
    return got, took


def test_a_delayed_relay_costs_each_exchange_a_round_trip_and_keeps_the_bytes():
    srv, port = _echo_server()
    relay = bench.CountingRelay(port, delay=0.05)
    try:
        payloads = [b"hello", bytes(range(256)) * 4096, b"x"]  # the middle one 1 MiB
        got, took = _exchange(relay.port, payloads)
        assert got == payloads
        assert all(t >= 0.1 for t in took), took  # 50 ms each way
        time.sleep(0.2)  # the counts of the last chunk are taken as it leaves
        total = sum(map(len, payloads))
        assert (relay.up, relay.down) == (total, total)
    finally:
        relay.close()
        srv.close()


def test_without_a_delay_the_relay_forwards_and_counts():
    srv, port = _echo_server()
    relay = bench.CountingRelay(port)
    try:
        got, _ = _exchange(relay.port, [b"ping"] * 5)
        assert got == [b"ping"] * 5
        time.sleep(0.1)
        assert (relay.up, relay.down) == (20, 20)
    finally:
        relay.close()
        srv.close()
