"""
Baseline: the original select() server design, speaking the count protocol.

One thread, one C{select.select} call per turn over the listening socket
and every client; non-blocking sockets, a read buffer and a write buffer
per client, persistent connections, LF-framed requests answered in order.
C{select} is limited to descriptors below 1024 (FD_SETSIZE), as the
original was.

    python benchmarks/baselines/select_loop.py --port 5054
"""

from __future__ import annotations

import argparse
import contextlib
import select
import socket
import time
from typing import IO

from primecount.core.count import evaluate
from primecount.core.outcomes import LINE_TOO_LONG
from primecount.journal.formats import format_original
from primecount.journal.records import PROTOCOL_COUNT, Record

MAX_LINE = 16384


class SelectServer:
    """
    A select() loop serving the count protocol.
    """

    def __init__(self, log: str | None) -> None:
        self.log: IO[str] | None = (
            open(log, "a", encoding="utf-8") if log is not None else None  # noqa: SIM115
        )
        self.inbox: dict[socket.socket, bytes] = {}
        self.outbox: dict[socket.socket, bytes] = {}
        self.closing: set[socket.socket] = set()
        self.peers: dict[socket.socket, str] = {}

    def answer(self, line: bytes, ip: str) -> bytes:
        """
        The reply to one request line, logged when a log is open.
        """
        evaluation = evaluate(line)
        if self.log is not None:
            self.log.write(
                format_original(
                    Record(time.time(), ip, 0, PROTOCOL_COUNT, *evaluation[:3], evaluation.error)
                )
                + "\n"
            )
        return evaluation.reply()

    def drop(self, sock: socket.socket) -> None:
        """
        Forget and close one client.
        """
        self.inbox.pop(sock, None)
        self.outbox.pop(sock, None)
        self.peers.pop(sock, None)
        self.closing.discard(sock)
        sock.close()

    def readable(self, sock: socket.socket) -> None:
        """
        Read what a client sent and queue the replies to its complete lines.
        """
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self.drop(sock)
            return
        ip = self.peers[sock]
        if not data:
            rest = self.inbox[sock]
            if rest:
                self.outbox[sock] += self.answer(rest, ip)
            self.closing.add(sock)
            if not self.outbox[sock]:
                self.drop(sock)
            return
        buffer = self.inbox[sock] + data
        if b"\n" not in buffer:
            self.inbox[sock] = buffer
            if len(buffer) > MAX_LINE:
                self.outbox[sock] += LINE_TOO_LONG.reply()
                self.inbox[sock] = b""
                self.closing.add(sock)
            return
        lines = buffer.split(b"\n")
        self.inbox[sock] = lines.pop()
        self.outbox[sock] += b"".join(self.answer(line, ip) for line in lines)
        self.writable(sock)

    def writable(self, sock: socket.socket) -> None:
        """
        Send as much of a client's pending replies as the socket takes.
        """
        pending = self.outbox.get(sock)
        if pending:
            try:
                sent = sock.send(pending)
            except BlockingIOError:
                return
            except OSError:
                self.drop(sock)
                return
            self.outbox[sock] = pending[sent:]
        if sock in self.closing and not self.outbox.get(sock):
            self.drop(sock)

    def serve(self, interface: str, port: int) -> None:
        """
        Run the select() loop forever.
        """
        with socket.create_server((interface, port), backlog=1024) as server:
            server.setblocking(False)
            while True:
                clients = list(self.inbox)
                waiting = [s for s in clients if self.outbox[s]]
                readable, writable, _ = select.select([server, *clients], waiting, [], 1.0)
                for sock in readable:
                    if sock is server:
                        self.accept(server)
                    elif sock in self.inbox:
                        self.readable(sock)
                for sock in writable:
                    if sock in self.inbox:
                        self.writable(sock)
                if self.log is not None:
                    self.log.flush()

    def accept(self, server: socket.socket) -> None:
        """
        Accept every pending connection.
        """
        for _ in range(64):
            try:
                sock, address = server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            self.inbox[sock] = b""
            self.outbox[sock] = b""
            self.peers[sock] = address[0]


def main() -> None:
    """
    Parse the command line and serve.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--port", type=int, default=5050)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--log", help="append one line per request to this file")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        SelectServer(args.log).serve(args.interface, args.port)


if __name__ == "__main__":
    main()
