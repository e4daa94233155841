"""
The test doubles shared by the test modules: one fake reactor, one
synchronous thread pool, one journal, a count-protocol harness built from
them, and a scripted line server on a real socket for the load generators.
"""

from __future__ import annotations

import contextlib
import socketserver
import threading
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from primecount.core.proxyheader import TrustedProxies
from primecount.journal import JournalUnavailable
from primecount.journal.records import Record
from primecount.server.connections import Connections
from primecount.server.countprotocol import CountFactory, CountProtocol
from primecount.server.pipeline import Pipeline

#: How a scripted server answers one request line (without its LF): the
#: reply's bytes, or L{None} to hang up without one.
Answer = Callable[[bytes], bytes | None]


class FakeReactor(Clock):
    """
    A L{Clock} whose C{callFromThread} runs the call on the next
    C{advance(0)}, as a real reactor runs it on its next turn.
    """

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        """
        Schedule C{f} for the reactor's next turn.
        """
        self.callLater(0, f, *a, **kw)


class SyncPool:
    """
    A thread pool that runs each job at once, in the calling thread; or,
    while C{hold} is set, keeps the jobs until C{release} or C{runOne} (or
    until a test runs C{held} ones itself, in any order).

    A job's result reaches the reactor by C{callFromThread}, on its next
    turn (see L{FakeReactor}). Given that C{reactor}, a held job, run by the
    test, lets the reactor take that turn at once, as a real reactor would
    while the test waits.

    @ivar jobs: how many jobs were submitted.
    @ivar ran: the names of the functions run, in order.
    @ivar held: the jobs kept while C{hold} is set, oldest first.
    @ivar max: the pool's thread count, as L{ThreadPool.max}.
    """

    max = 4

    def __init__(self, reactor: Clock | None = None, hold: bool = False) -> None:
        self.reactor = reactor
        self.jobs = 0
        self.ran: list[str] = []
        self.hold = hold
        self.held: list[Callable[[], None]] = []

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], None], f: Any, *a: Any, **kw: Any
    ) -> None:
        """
        Run C{f} (now, or later while holding) and hand its outcome to
        C{onResult}, as the pool would.
        """
        self.jobs += 1

        def run() -> None:
            self.ran.append(f.__name__)
            try:
                result = f(*a, **kw)
            except BaseException:
                onResult(False, Failure())
            else:
                onResult(True, result)

        def runHeld() -> None:
            run()
            if self.reactor is not None:
                self.reactor.advance(0)

        if self.hold:
            self.held.append(runHeld)
        else:
            run()

    def runOne(self) -> None:
        """
        Run the oldest held job.
        """
        self.held.pop(0)()

    def release(self) -> None:
        """
        Run the held jobs, in order, and stop holding.
        """
        self.hold = False
        held, self.held = self.held, []
        for run in held:
            run()

    def segmentJobs(self) -> int:
        """
        How many range segments were sieved.
        """
        return self.ran.count("encoded_segment")


class FakeJournal(Service):
    """
    A journal that keeps what it is given: committed (from the pool),
    appended or settled (from the reactor). It passes the journal interface
    tests (L{tests.unit.test_journal_interface.JournalContract}) that the
    SQLite and the PostgreSQL journals pass.

    @ivar records: every record kept, in order.
    @ivar failing: while set, L{commit} raises L{JournalUnavailable}, and
        L{append} and L{settle} fail with it, keeping nothing.
    @ivar result: makes the result of each L{append} and L{settle};
        succeeds by default.
    @ivar committed: how many records were committed.
    @ivar groups: how many group commits (calls of L{commit} and
        L{append}) committed them.
    """

    keepsRecords = True
    stuck = False

    def __init__(self) -> None:
        self.abandoned: list[Callable[[frozenset[int]], None]] = []
        self.records: list[Record] = []
        self.failing = False
        self.committed = 0
        self.groups = 0
        self.result: Callable[[], Deferred[None]] = lambda: succeed(None)
        self._waiting: list[tuple[Callable[[Record], bool], Deferred[Record]]] = []
        self._stopped = False

    def startService(self) -> None:
        """
        Start (again): records are taken, as they are before the first start.
        """
        super().startService()
        self._stopped = False

    def stopService(self) -> Deferred[None]:
        """
        Stop: from now on nothing is taken (everything given so far was
        kept at once).
        """
        super().stopService()
        self._stopped = True
        return succeed(None)

    def hurry(self) -> None:
        """
        Nothing waits for a database here.
        """

    def _refusal(self) -> JournalUnavailable | None:
        if self._stopped:
            return JournalUnavailable("journal is stopped")
        if self.failing:
            return JournalUnavailable("test says no")
        return None

    def commit(self, records: Sequence[Record]) -> None:
        """
        Keep C{records}, or raise L{JournalUnavailable} while C{failing} or
        once stopped.
        """
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        self._keep(records)

    def onAbandon(self, callback: Callable[[frozenset[int]], None]) -> None:
        """
        Keep C{callback}: a test calls the callbacks in L{abandoned} to say
        a commit was given up.
        """
        self.abandoned.append(callback)

    def append(self, records: Sequence[Record]) -> Deferred[None]:
        """
        Keep C{records}; fail with L{JournalUnavailable}, keeping nothing,
        while C{failing} or once stopped.
        """
        refusal = self._refusal()
        if refusal is not None:
            return fail(refusal)
        self._keep(records)
        return self.result()

    def settle(self, records: Sequence[Record]) -> Deferred[None]:
        """
        Complete pending records as the real journals do: the latest
        record of the same connection and range with neither a sum check
        nor an error takes the new count, error and sum check. Fails with
        L{JournalUnavailable} while C{failing} or once stopped.
        """
        refusal = self._refusal()
        if refusal is not None:
            return fail(refusal)
        for record in records:
            for i in range(len(self.records) - 1, -1, -1):
                old = self.records[i]
                if (old.peer, old.port, old.a, old.b) == (
                    record.peer,
                    record.port,
                    record.a,
                    record.b,
                ) and (old.sum_ok, old.error) == (None, None):
                    self.records[i] = old._replace(
                        count=record.count, error=record.error, sum_ok=record.sum_ok
                    )
                    self._notify(self.records[i])
                    break
        return self.result()

    def _keep(self, records: Sequence[Record]) -> None:
        self.committed += len(records)
        self.groups += 1
        self.records.extend(records)
        for record in records:
            self._notify(record)

    def _notify(self, record: Record) -> None:
        for entry in list(self._waiting):
            if entry[0](record):
                self._waiting.remove(entry)
                entry[1].callback(record)

    def whenRecorded(self, match: Callable[[Record], bool]) -> Deferred[Record]:
        """
        Fire with the first record, kept or to come, that C{match}es.
        """
        for record in self.records:
            if match(record):
                return succeed(record)
        d: Deferred[Record] = Deferred()
        self._waiting.append((match, d))
        return d


#: Where a L{Harness}'s connections come from unless the test says
#: otherwise; behind HAProxy (C{proxyHeader=True}) it is HAProxy's address,
#: which the harness trusts unless the test passes C{trustedProxies}.
HARNESS_PEER = "192.0.2.7"


class Harness:
    """
    One L{CountProtocol} on a L{StringTransport}, with a fake reactor, a
    synchronous pool and a fake journal.
    """

    def __init__(
        self, maxConnections: int = 10000, maxPerPeer: int | None = None, **factoryArgs: Any
    ) -> None:
        if factoryArgs.get("proxyHeader"):
            factoryArgs.setdefault("trustedProxies", TrustedProxies.parse(HARNESS_PEER))
        self.reactor = FakeReactor()
        self.pool = SyncPool(self.reactor)
        self.journal = FakeJournal()
        self.pipeline = Pipeline(self.reactor, self.pool, self.journal)
        self.connections = Connections(maxConnections, maxPerPeer, clock=self.reactor)
        self.factory = CountFactory(
            self.reactor, self.pipeline, connections=self.connections, **factoryArgs
        )
        self.transport, self.protocol = self.connect()

    def connect(self, host: str = HARNESS_PEER) -> tuple[StringTransport, CountProtocol]:
        """
        Open one more connection.
        """
        peer = IPv4Address("TCP", host, 40000 + len(self.connections))
        protocol = self.factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return transport, protocol  # type: ignore[return-value]

    def send(self, data: bytes, protocol: Any = None) -> None:
        """
        Deliver C{data} and let the turn end (the pipeline flushes).
        """
        (protocol or self.protocol).dataReceived(data)
        self.reactor.advance(0)

    def replies(self, transport: StringTransport | None = None) -> list[bytes]:
        """
        The reply lines written so far, LF included.
        """
        value = (transport or self.transport).value()
        return [line + b"\n" for line in value.split(b"\n")[:-1]]


class LineHandler(socketserver.StreamRequestHandler):
    """
    Reads lines and answers each with the server's C{answer} function; a
    C{None} answer closes the connection without a reply.
    """

    def handle(self) -> None:
        answer: Answer = self.server.answer  # type: ignore[attr-defined]
        self.connection.settimeout(5)
        try:
            for line in self.rfile:
                reply = answer(line.rstrip(b"\n"))
                if reply is None:
                    return
                self.wfile.write(reply)
                self.wfile.flush()
        except OSError:
            return


class ThreadedServer(socketserver.ThreadingTCPServer):
    """
    A thread per connection, daemon threads, a long accept queue: a
    scripted server (set its C{answer}) that a load generator can flood.
    """

    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True


def serve_in_thread(test: Any, server: socketserver.BaseServer) -> int:
    """
    Serve C{server} in a thread until C{test} ends; return its port.
    """
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    test.addCleanup(stop)
    return int(server.server_address[1])  # type: ignore[index]


class CopyCuttingRelay:
    """
    A TCP relay to a PostgreSQL server that, once L{armed}, cuts the
    connection right after it forwards the end of a COPY (the client's
    C{CopyDone} message): the server may commit, the client never hears.
    Every other connection and byte passes through.

    @ivar port: the relay's port on 127.0.0.1.
    @ivar armed: cut at the next C{CopyDone}; cleared when it has cut.
    @ivar cuts: how many connections it cut.
    """

    #: The frontend's CopyDone message: C{c}, then its length, 4.
    COPY_DONE = b"c\x00\x00\x00\x04"

    def __init__(self, target: int) -> None:
        import socket

        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.armed = False
        self.cuts = 0
        self._open: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            self._open += [client, server]
            # Set before the CopyDone goes on: from then on the server's
            # answer is never passed back, however fast it comes.
            cut = threading.Event()
            for source, sink, upstream in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, sink, upstream, cut), daemon=True
                ).start()

    def _pump(self, source: Any, sink: Any, upstream: bool, cut: threading.Event) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data or cut.is_set():
                    break
                if upstream and self.armed and self.COPY_DONE in data:
                    self.armed = False
                    self.cuts += 1
                    cut.set()
                    sink.sendall(data)
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(2)
            sock.close()

    def close(self) -> None:
        """
        Stop accepting and close every connection.
        """
        self._listener.close()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.close()
