# -*- test-case-name: tests.system.test_several_hosts -*-
"""
Clients for tests and benchmarks that run real servers under load: each a
thread asking one count-protocol question after another (L{ClientThread}),
keeping what was acknowledged and what was refused, for checks after a
host or a database was killed under it.
"""

from __future__ import annotations

import socket
import threading
import time

from primecount.core.count import evaluate
from primecount.core.outcomes import JOURNAL_UNAVAILABLE

#: The client side of every connection: not HAProxy's 127.0.0.1.
CLIENT = "127.0.0.2"


class ClientThread(threading.Thread):
    """
    Asks one question after another from C{CLIENT} (through HAProxy, or
    straight to a host), a new connection for each after a failure, until
    told to stop (bounded by C{deadline} and by C{questions}); keeps every
    message whose correct reply it received, and every other reply.

    @ivar acknowledged: (message, when) of each correct reply.
    @ivar refused: when each C{ERR journal unavailable} came.
    @ivar unexpected: (message, reply) of any other reply.
    @ivar slowest: the longest wait for a reply, in seconds.
    @ivar slowestSent: when the request that waited longest was sent, on
        the C{time.monotonic} clock.
    @ivar failures: connections that failed, closed or timed out.
    """

    def __init__(
        self,
        name: str,
        port: int,
        deadline: float,
        timeout: float = 5.0,
        questions: int = 100_000,
    ) -> None:
        """
        @param deadline: when to stop at the latest, on the
            C{time.monotonic} clock.
        @param timeout: seconds to wait for a reply before giving up on the
            connection.
        @param questions: how many to ask at most.
        """
        super().__init__(name=name, daemon=True)
        self.port = port
        self.deadline = deadline
        self.timeout = timeout
        self.questions = questions
        self.stopping = threading.Event()
        self.acknowledged: list[tuple[str, float]] = []
        self.refused: list[float] = []
        self.unexpected: list[tuple[str, bytes]] = []
        self.slowest = 0.0
        self.slowestSent = 0.0
        self.failures = 0

    def connect(self) -> socket.socket:
        """
        A new connection from L{CLIENT} to the port.
        """
        sock = socket.socket()
        sock.settimeout(self.timeout)
        sock.bind((CLIENT, 0))
        sock.connect(("127.0.0.1", self.port))
        return sock

    def run(self) -> None:
        """
        Ask until stopped, past the deadline, or out of questions.
        """
        sock: socket.socket | None = None
        n = 0
        while (
            not self.stopping.is_set() and time.monotonic() < self.deadline and n < self.questions
        ):
            n += 1
            message = f"{self.name}-{n}-{'x' * (n % 5)}"
            try:
                if sock is None:
                    sock = self.connect()
                sent = time.monotonic()
                sock.sendall(message.encode() + b"\n")
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = sock.recv(256)
                    if not chunk:
                        raise ConnectionError("closed")
                    reply += chunk
            except OSError:
                self.failures += 1
                if sock is not None:
                    sock.close()
                sock = None
                time.sleep(0.01)
                continue
            now = time.monotonic()
            if now - sent > self.slowest:
                self.slowest, self.slowestSent = now - sent, sent
            if reply == evaluate(message.encode()).reply():
                self.acknowledged.append((message, now))
            elif reply == JOURNAL_UNAVAILABLE.reply():
                self.refused.append(now)
            else:
                self.unexpected.append((message, reply))
        if sock is not None:
            sock.close()
