# -*- test-case-name: tests.unit.test_countprotocol -*-
"""
The count protocol: one request per line, one reply per request, in order.

L{CountProtocol} only frames and orders: it cuts the byte stream into
lines, hands them to the shared L{Pipeline} and writes the replies as they
become ready, in request order. Evaluation and journalling happen in the
pipeline; the protocol never blocks and never does work that grows with
the input beyond splitting what one read delivered.

With C{--framing read} (L{READ}) a connection carries one request and no
newline is needed, as with the original server, which took what one
C{recv(1024)} returned: the message is what the connection's first read
delivers (everything the client's segments brought by then), cut at its
first LF if it holds one; longer than C{--max-line} is C{ERR line too
long}. With C{--framing read:MS} the server also waits up to MS
milliseconds from the first byte for more segments, unless a LF or the
client's half-close ends the message sooner. The message is then decoded,
counted and journalled as a line is; the one reply is written and the
connection closed.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import interfaces
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from primecount.core import count
from primecount.core.count import Evaluation
from primecount.core.outcomes import LINE_TOO_LONG, SERVER_BUSY, Outcome
from primecount.core.proxyheader import TRUSTED_BY_DEFAULT, TrustedProxies
from primecount.journal.records import PROTOCOL_COUNT
from primecount.metrics.episodes import Episodes
from primecount.metrics.recorder import MetricsRecorder, NullMetrics
from primecount.server.budget import REQUEST_OVERHEAD, MemoryBudget
from primecount.server.connections import Connections, no_delay, peer_of
from primecount.server.idle import IdleSweep
from primecount.server.pipeline import PendingReply, Pipeline, Request
from primecount.server.proxy import ProxyHeaderReceiver
from primecount.server.transport import buffered, write_now

#: Stop reading from a client with this many unanswered requests; read again
#: when fewer than half remain. Lines read beyond it stay unparsed bytes
#: until there is room: a parsed request costs far more than its line
#: (L{REQUEST_OVERHEAD}), and one read can hold 65,536 empty lines.
MAX_PENDING = 1024

#: C{--framing}: one request per LF-terminated line (the default).
LINE = "line"
#: C{--framing}: one request per connection, the first read (no newline).
READ = "read"
FRAMINGS = (LINE, READ)

#: With L{READ} framing, how long after a connection's first bytes the rest
#: of its message may still arrive (a message sent in two TCP segments),
#: unless a LF or the client's half-close ends it sooner. By default none:
#: the first read is the message, as the original's C{recv(1024)}; a
#: window delays every reply to a client that neither ends its message
#: with a LF nor half-closes by that much (C{--framing read:MS}).
READ_WINDOW = 0.0

#: The longest read window C{--framing read:MS} accepts, in milliseconds.
MAX_READ_WINDOW_MS = 1000


def parse_framing(value: str) -> tuple[str, float]:
    """
    Parse C{--framing}: C{line}, C{read} or C{read:MS}.

    @return: the framing and its read window in seconds.
    @raise ValueError: in one line naming the option.
    """
    kind, sep, window = value.partition(":")
    if kind not in FRAMINGS or (sep and kind != READ):
        raise ValueError(f"--framing wants line, read or read:MS; got {value!r}")
    if not sep:
        return kind, READ_WINDOW
    try:
        ms = float(window)
    except ValueError:
        ms = -1.0
    if not 0 <= ms <= MAX_READ_WINDOW_MS:
        raise ValueError(
            f"--framing read:MS wants MS from 0 to {MAX_READ_WINDOW_MS} milliseconds; got {value!r}"
        )
    return kind, ms / 1000


class _Pending(PendingReply):
    """
    A L{PendingReply} that knows what its request costs the memory budget.

    @ivar size: the bytes charged for the request, released with its reply.
    """

    __slots__ = ("size",)

    size: int


@implementer(interfaces.IHalfCloseableProtocol, interfaces.IPushProducer)
class CountProtocol(ProxyHeaderReceiver, LineReceiver):
    """
    One client connection of the count protocol.

    It is registered as the transport's producer so that when the client
    stops reading replies, the server stops reading requests.

    What it holds for its client counts against the process's
    L{MemoryBudget} (see L{primecount.server.budget}): its unread input,
    each unanswered request, and its unsent replies once the transport's
    buffer is full; over budget, it may be paused.

    @ivar peer: the client's address. @ivar port: the client's port.
    @ivar held: the bytes charged to the memory budget.
    """

    delimiter = b"\n"
    factory: CountFactory
    transport: Any
    _log = Logger()

    def __init__(self) -> None:
        self._pending: deque[_Pending] = deque()
        self._parsed: list[Request] = []  # not yet submitted to the pipeline
        self._closing = False  # answer what is queued, then close
        self._lost = False
        self._readPaused = False  # too many unanswered requests
        self._writePaused = False  # the client is not reading replies
        self._memoryPaused = False  # the memory budget is spent
        self._unparsed = False  # _buffer holds whole lines beyond MAX_PENDING
        self._producing = False  # registered as the transport's producer
        self.held = 0  # charged to the budget: len(_buffer) and the two below
        self._requestsHeld = 0  # the sizes of the unanswered requests
        self._outputHeld = 0  # unsent replies, while the transport is full
        self._window: Any = None  # READ framing: the read window's end
        self.lastActive: float | None = None  # read by the factory's IdleSweep
        self.peer = ""
        self.port = 0

    # -- connection life ----------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        self.MAX_LENGTH = factory.maxLine
        self.callLater = factory.reactor.callLater  # type: ignore[method-assign]
        self.peer, self.port = peer_of(self.transport.getPeer(), self.transport.getHost())
        no_delay(self.transport)
        self.transport.registerProducer(self, True)
        self._producing = True
        self._seconds = factory.reactor.seconds
        self._budget = factory.budget
        self._budget.join(self)
        factory.idle.watch(self)
        if factory.proxyHeader:
            # Admitted once the PROXY line names the real client (if it
            # comes from a trusted proxy at all).
            self.awaitProxyHeader()
            return
        self.connectionAdmitted()

    def connectionAdmitted(self) -> None:
        self.factory.connections.opened(self, self.peer)
        self.factory.metrics.connectionOpened(PROTOCOL_COUNT)

    def connectionLost(self, reason: Any = None) -> None:
        self._lost = True
        self.factory.idle.unwatch(self)
        self._endWindow()
        # The input and the transport's buffers go now; the requests in the
        # pipeline stay charged until they are answered (see replyReady).
        self._buffer = b""
        self._unparsed = False
        self._account()
        self._setOutput(0)
        if not self._pending:
            self._budget.leave(self)
        if not self.awaitingProxyHeader:
            self.factory.connections.closed(self)
            self.factory.metrics.connectionClosed(PROTOCOL_COUNT)

    def readConnectionLost(self) -> None:
        """
        The client half-closed: bytes after the last LF are one last request
        (with L{READ} framing: the message, if any byte came).
        """
        self._endWindow()
        if self._unparsed:
            self._parse(b"", capped=False)
        rest, self._buffer = self._buffer, b""
        if rest:
            self._request(rest, len(rest))
            self._send()
        self._account()
        self.closeWhenDone()

    def writeConnectionLost(self) -> None:
        """
        The client cannot receive replies any more: nothing left to do.
        """
        self._close()

    def _active(self) -> None:
        """
        The connection did something: its idle time starts again.
        """
        self.lastActive = self._seconds()

    def idleTimeout(self) -> None:
        """
        No request for C{--timeout} seconds (the factory's L{IdleSweep} says
        so): close an idle connection, drop one whose client stopped reading
        its replies.
        """
        if self._pending and not self._writePaused:
            # Waiting for answers we owe the client (the journal): not idle.
            return
        if self._writePaused or self._closing:
            # Replies are stuck in the send buffer: the client stopped
            # reading them, and a graceful close would wait for it forever.
            self.factory.episodes.event(
                "clients dropped for not reading their replies",
                "{peer}:{port} stopped reading its replies for {timeout:g} s; dropping it"
                " (more such are counted, not logged)",
                peer=self.peer,
                port=self.port,
                timeout=self.factory.timeout,
            )
            self.transport.abortConnection()
            return
        self.factory.episodes.event(
            "idle connections closed",
            "closing idle connection from {peer}:{port} (more such are counted, not logged)",
            peer=self.peer,
            port=self.port,
        )
        self._close()

    def _close(self) -> None:
        """
        Close once everything written has been sent. The idle sweep keeps
        watching, so a client that never takes the rest is dropped.
        """
        # A registered producer that the transport has paused makes it wait
        # for a resumeProducing that never comes instead of closing.
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    # -- input --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Split what one read delivered into lines, in linear time.

        C{LineReceiver.dataReceived} re-copies the rest of the buffer for
        every line, which is quadratic in the lines per read; a client
        pipelining short lines would make each read cost milliseconds of
        the reactor's time. This keeps C{LineReceiver}'s C{MAX_LENGTH} and
        C{lineLengthExceeded} but splits once per read (L{_parse}).
        """
        if self._closing:
            return
        if self.awaitingProxyHeader:
            data = self.proxyHeaderReceived(data)
            if not data:
                return
        if self.factory.framing == READ:
            self._readMessage(data)
            self._account()  # a message waiting for its read window
            return
        self._parse(data)

    def _parse(self, data: bytes, capped: bool = True) -> None:
        """
        Take the lines of the buffer and C{data} as requests, charge them
        to the budget, submit them to the pipeline.

        @param capped: whether to stop at L{MAX_PENDING} unanswered
            requests, keeping the other lines as bytes in the buffer.
        """
        lines = (self._buffer + data).split(self.delimiter)
        rest = lines.pop()
        room = MAX_PENDING - len(self._pending)
        if capped and len(lines) > room:
            room = max(room, 0)
            lines.append(rest)
            rest = self.delimiter.join(lines[room:])
            del lines[room:]
            self._unparsed = True
        else:
            self._unparsed = False
        self._buffer = rest
        if lines:
            self._active()
        maxLength = self.MAX_LENGTH
        closeAfterReply = self.factory.closeAfterReply
        pendings, parsed, held = self._pending, self._parsed, 0
        for line in lines:
            n = len(line)
            if n > maxLength:
                self.lineLengthExceeded(line)
                break
            # What _request does, inline: this runs for every request.
            pending = _Pending()
            pending.size = size = n + REQUEST_OVERHEAD
            held += size
            pendings.append(pending)
            parsed.append((line, self, pending))
            if closeAfterReply:
                # The rest of what it sent goes unanswered.
                self._buffer = b""
                self._unparsed = False
                self.closeWhenDone()
                break
        else:
            if not self._unparsed and len(self._buffer) > maxLength:
                self.lineLengthExceeded(self._buffer)
        self._requestsHeld += held
        self._send()
        self._account()

    def _readMessage(self, data: bytes) -> None:
        """
        L{READ} framing: gather the one message of this connection; take it
        at the first LF, or open the read window at its first bytes.
        """
        buffered = self._buffer + data
        line, found, _ = buffered.partition(self.delimiter)
        if found and len(line) <= self.MAX_LENGTH:
            self._buffer = b""
            self._takeMessage(line)
        elif len(line) > self.MAX_LENGTH:
            self._endWindow()
            self.lineLengthExceeded(line)
            self._send()
        elif not self.factory.readWindow:
            self._takeMessage(buffered)
        else:
            self._buffer = buffered
            if self._window is None:
                self._window = self.callLater(self.factory.readWindow, self._windowEnded)

    def _windowEnded(self) -> None:
        self._window = None
        if self._closing or self._lost:
            return
        message, self._buffer = self._buffer, b""
        self._takeMessage(message)

    def _endWindow(self) -> None:
        if self._window is not None:
            if self._window.active():
                self._window.cancel()
            self._window = None

    def _takeMessage(self, message: bytes) -> None:
        """
        L{READ} framing: answer C{message}, then close.
        """
        self._endWindow()
        self._active()
        self._request(message, len(message))
        self.closeWhenDone()
        self._send()
        self._account()

    def refuseConnection(self, outcome: Outcome) -> None:
        self._closing = True
        self.transport.write(outcome.reply())
        self._close()

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        Framing is lost: answer C{ERR line too long} after the earlier
        replies, then close.
        """
        self.factory.episodes.event(
            "connections closed with ERR line too long",
            "{peer}:{port} sent a line longer than {limit} bytes; closing"
            " (more such are counted, not logged)",
            peer=self.peer,
            port=self.port,
            limit=self.MAX_LENGTH,
        )
        self._buffer = b""
        self._unparsed = False
        self._request(Evaluation(count.excerpt(line), outcome=LINE_TOO_LONG), 0)
        self.closeWhenDone()

    def _request(self, item: bytes | Evaluation, size: int) -> None:
        """
        Queue a request: C{item}, whose line is C{size} bytes long.
        """
        pending = _Pending()
        pending.size = size + REQUEST_OVERHEAD
        self._requestsHeld += pending.size
        self._pending.append(pending)
        self._parsed.append((item, self, pending))

    def _send(self) -> None:
        if self._parsed:
            parsed, self._parsed = self._parsed, []
            self.factory.pipeline.submit(parsed)
        if len(self._pending) >= MAX_PENDING and not self._readPaused:
            self._readPaused = True
            self._updateReading()

    def closeWhenDone(self) -> None:
        """
        Stop reading requests; close once every received one is answered.
        """
        if self._lost:
            return
        if self._unparsed and not self._closing:
            # Whole lines read but held back by MAX_PENDING were received
            # too: they are answered before the connection closes.
            self._parse(b"", capped=False)
        self._closing = True
        self.transport.pauseProducing()
        if not self._pending:
            self._close()

    # -- output -------------------------------------------------------------

    def replyReady(self) -> None:
        """
        Write every reply at the head of the queue that is ready.
        """
        ready: list[bytes] = []
        freed = 0
        pending = self._pending
        while pending and (reply := pending[0].reply) is not None:
            freed += pending.popleft().size
            ready.append(reply)
        if not ready:
            return
        self._requestsHeld -= freed
        if self._lost:
            # Answered after its client left: only the memory is let go.
            self._account()
            if not pending:
                self._budget.leave(self)
            return
        write_now(self.transport, b"".join(ready))
        if self._writePaused:
            self._outputHeld = buffered(self.transport)
        self._account()
        if self._closing:
            if not pending:
                self._close()
            return
        self._active()
        if self._memoryPaused and not pending:
            # Everything it held is answered: pausing it frees no more.
            self._budget.resume(self)
        if self._readPaused and len(pending) < MAX_PENDING // 2:
            self._readPaused = False
            self._updateReading()

    # -- memory (see primecount.server.budget) -------------------------------

    def _account(self) -> None:
        """
        Tell the budget what this connection holds now (its arithmetic done
        here: this runs for every read and every reply written).
        """
        held = len(self._buffer) + self._requestsHeld + self._outputHeld
        delta = held - self.held
        self.held = held
        budget = self._budget
        budget.held += delta
        if delta > 0:
            if budget.held > budget.limit:
                budget.overLimit(self)
        elif budget.paused:
            budget.eased(self)

    def _setOutput(self, held: int) -> None:
        """
        The transport holds C{held} bytes of unsent replies.
        """
        self._outputHeld = held
        self._account()

    def pauseForMemory(self) -> bool:
        """
        The budget is spent and this connection holds more than its share:
        stop reading until it drains, unless it has nothing to answer.
        """
        if not self._pending or self._closing or self._lost:
            return False
        self._memoryPaused = True
        self._updateReading()
        return True

    def resumeForMemory(self) -> None:
        """
        The budget has room again: read, unless something else stops it.
        """
        self._memoryPaused = False
        self._updateReading()

    # -- flow control (IPushProducer, driven by the transport) ---------------

    def pauseProducing(self) -> None:
        """
        The client stopped reading its replies: stop reading its requests;
        what the transport holds for it counts against the budget.
        """
        self._writePaused = True
        if not self._lost:
            self._setOutput(buffered(self.transport))
        self._updateReading()

    def resumeProducing(self) -> None:
        """
        The transport sent everything: read again.
        """
        self._writePaused = False
        self._setOutput(0)
        self._updateReading()

    def stopProducing(self) -> None:
        pass

    def _updateReading(self) -> None:
        """
        Read from the client unless something stops it; lines held back by
        L{MAX_PENDING} are taken before anything more is read.
        """
        if self._closing or self._lost:
            return
        if self._readPaused or self._writePaused or self._memoryPaused:
            self.transport.pauseProducing()
            return
        if self._unparsed:
            self._parse(b"")
            if self._closing or self._readPaused or self._memoryPaused:
                return
        self.transport.resumeProducing()


class BusyProtocol(Protocol):
    """
    Tells a client over the connection limit so, then closes.
    """

    transport: Any
    factory: CountFactory

    def connectionMade(self) -> None:
        self.factory.metrics.requests(PROTOCOL_COUNT, SERVER_BUSY)
        self.transport.write(SERVER_BUSY.reply())
        self.transport.loseConnection()


class CountFactory(Factory):
    """
    Builds L{CountProtocol}s that share one L{Pipeline}, and admits
    connections within the process's limits (in C{buildProtocol}: Twisted's
    wrapping factories hide half-close and mishandle IPv4 addresses).
    """

    protocol = CountProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        reactor: Any,
        pipeline: Pipeline,
        *,
        timeout: float = 5.0,
        maxLine: int = 16384,
        closeAfterReply: bool = False,
        connections: Connections | None = None,
        metrics: MetricsRecorder | None = None,
        proxyHeader: bool = False,
        trustedProxies: TrustedProxies = TRUSTED_BY_DEFAULT,
        framing: str = LINE,
        readWindow: float = READ_WINDOW,
        budget: MemoryBudget | None = None,
        episodes: Episodes | None = None,
    ) -> None:
        """
        @param connections: the process's open connections and their limits,
            shared with the range protocol's factory.
        @param episodes: where what clients do wrong (idle, too long a line,
            a refused PROXY header) is logged, once per episode; by default
            the connections' own (L{Connections.episodes}).
        @param budget: the memory the process's connections may hold for
            their clients, shared with the range protocol's factory.
        @param metrics: counts open connections and refusals.
        @param proxyHeader: connections start with a PROXY protocol v1 line
            (behind HAProxy's C{send-proxy}); limits and the journal use the
            client address it names.
        @param trustedProxies: with C{proxyHeader}, the only addresses
            whose connections are served; others get C{ERR untrusted
            proxy}.
        @param framing: L{LINE} (a request per line) or L{READ} (one
            request per connection: its first read, see L{READ_WINDOW}).
        @param readWindow: with L{READ} framing, the seconds after the
            first bytes that later segments still join the message (0: the
            first read is the message).
        """
        if framing not in FRAMINGS:
            raise ValueError(f"unknown framing {framing!r}: expected line or read")
        self.reactor = reactor
        self.pipeline = pipeline
        self.timeout = timeout
        self.idle = IdleSweep(reactor, timeout)
        self.maxLine = maxLine
        self.closeAfterReply = closeAfterReply
        self.connections = connections if connections is not None else Connections(clock=reactor)
        self.metrics: MetricsRecorder = metrics if metrics is not None else NullMetrics()
        self.proxyHeader = proxyHeader
        self.trustedProxies = trustedProxies
        self.framing = framing
        self.readWindow = readWindow
        self.budget = budget if budget is not None else MemoryBudget()
        self.episodes = episodes if episodes is not None else self.connections.episodes

    def buildProtocol(self, addr: Any) -> Any:
        if self.proxyHeader:
            # The address here is the proxy's: admission waits for the header.
            return super().buildProtocol(addr)
        if not self.connections.admit(peer_of(addr)[0]):
            busy = BusyProtocol()
            busy.factory = self
            return busy
        return super().buildProtocol(addr)
