# -*- test-case-name: tests.unit.test_countprotocol -*-
"""
The count protocol, driven through L{StringTransport} with a fake clock, a
synchronous pool and a fake journal.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.address import UNIXAddress
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from primecount.core.proxyheader import TRUSTED_BY_DEFAULT, TrustedProxies
from primecount.journal.records import PROTOCOL_COUNT
from primecount.server import countprotocol as protocolModule
from primecount.server.pipeline import evaluate_batch
from primecount.server.transport import write_now
from tests.doubles import Harness


def recordAborts(h: Harness) -> list[bool]:
    """
    Record calls to the harness transport's C{abortConnection}.
    """
    aborted: list[bool] = []
    h.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    return aborted


class FramingTests(SynchronousTestCase):
    """
    Lines, replies, and the error replies that keep the connection open.
    """

    def test_originalExamples(self) -> None:
        h = Harness()
        h.send(b"abc2a\nabacada\nabacadabb\na\n")
        self.assertEqual(h.replies(), ["2 sí\n".encode(), b"4 no\n", "3 sí\n".encode(), b"1 no\n"])

    def test_noGreeting(self) -> None:
        h = Harness()
        self.assertEqual(h.transport.value(), b"")

    def test_crBeforeLfIsDropped(self) -> None:
        h = Harness()
        h.send(b"abc2a\r\nab\r\r\n")
        self.assertEqual(h.replies(), ["2 sí\n".encode(), b"1 no\n"])

    def test_surroundingWhitespaceIsStripped(self) -> None:
        h = Harness()
        h.send(b"  abca \t\n")
        self.assertEqual(h.replies(), ["2 sí\n".encode()])

    def test_lastCodePointNotLastByte(self) -> None:
        h = Harness()
        h.send("ñaña ñ\n".encode())
        self.assertEqual(h.replies(), ["3 sí\n".encode()])

    def test_nulAndTabAreOrdinaryCharacters(self) -> None:
        h = Harness()
        h.send(b"a\x00b\x00\na\tb\ta\tt\t\n")
        self.assertEqual(h.replies(), ["2 sí\n".encode(), b"1 no\n"])

    def test_emptyAndBlankMessages(self) -> None:
        h = Harness()
        h.send(b"\n \t \nabc2a\n")
        self.assertEqual(
            h.replies(), [b"ERR empty message\n", b"ERR empty message\n", "2 sí\n".encode()]
        )
        self.assertFalse(h.transport.disconnecting)

    def test_invalidUtf8KeepsConnection(self) -> None:
        h = Harness()
        h.send(b"\xff\xfe\nabc2a\n")
        self.assertEqual(h.replies(), [b"ERR invalid UTF-8\n", "2 sí\n".encode()])
        self.assertFalse(h.transport.disconnecting)

    def test_lineSplitAcrossReads(self) -> None:
        h = Harness()
        h.send(b"abc")
        self.assertEqual(h.replies(), [])
        h.send(b"2a\nab")
        h.send(b"acada\n")
        self.assertEqual(h.replies(), ["2 sí\n".encode(), b"4 no\n"])

    def test_lineAtLimitAccepted(self) -> None:
        h = Harness(maxLine=8)
        h.send(b"aaaaaaa\r\n")
        self.assertEqual(h.replies(), ["7 sí\n".encode()])
        self.assertFalse(h.transport.disconnecting)

    def test_lineTooLongAnsweredAfterEarlierRepliesThenClosed(self) -> None:
        h = Harness(maxLine=8)
        h.send(b"abc2a\n" + b"x" * 9 + b"\nabc2a\n")
        self.assertEqual(h.replies(), ["2 sí\n".encode(), b"ERR line too long\n"])
        self.assertTrue(h.transport.disconnecting)
        h.send(b"abc2a\n")
        self.assertEqual(len(h.replies()), 2)

    def test_unterminatedLineTooLong(self) -> None:
        h = Harness(maxLine=8)
        h.send(b"x" * 5)
        self.assertEqual(h.replies(), [])
        h.send(b"x" * 5)
        self.assertEqual(h.replies(), [b"ERR line too long\n"])
        self.assertTrue(h.transport.disconnecting)


class HalfCloseTests(SynchronousTestCase):
    """
    A client that half-closes gets its last, unterminated request answered.
    """

    def test_finalUnterminatedRequestAnswered(self) -> None:
        h = Harness()
        h.send(b"abc2a\nabacada")
        h.protocol.readConnectionLost()
        h.reactor.advance(0)
        self.assertEqual(h.replies(), ["2 sí\n".encode(), b"4 no\n"])
        self.assertTrue(h.transport.disconnecting)

    def test_halfCloseWithNothingPendingCloses(self) -> None:
        h = Harness()
        h.send(b"abc2a\n")
        h.protocol.readConnectionLost()
        self.assertTrue(h.transport.disconnecting)

    def test_halfCloseWaitsForJournal(self) -> None:
        h = Harness()
        h.pool.hold = True
        h.send(b"abc2a\n")
        h.protocol.readConnectionLost()
        self.assertFalse(h.transport.disconnecting)
        h.pool.release()
        self.assertEqual(h.replies(), ["2 sí\n".encode()])
        self.assertTrue(h.transport.disconnecting)


class OrderAndBatchingTests(SynchronousTestCase):
    """
    Pipelined requests: one pool job at a time, replies in request order.
    """

    def test_pipelinedRepliesKeepOrderAcrossBatches(self) -> None:
        h = Harness()
        h.pool.hold = True
        h.send(b"a\n")
        h.send(b"abca\n")
        # One job in flight: the second request waits for the next one.
        self.assertEqual(len(h.pool.held), 1)
        h.pool.held.pop()()
        self.assertEqual(h.replies(), [b"1 no\n"])
        h.pool.release()
        self.assertEqual(h.replies(), [b"1 no\n", "2 sí\n".encode()])

    def test_oneJobPerTurnForAllConnections(self) -> None:
        h = Harness()
        transport2, protocol2 = h.connect()
        h.protocol.dataReceived(b"abc2a\nab\n")
        protocol2.dataReceived(b"abacada\n")
        h.reactor.advance(0)
        self.assertEqual(h.pool.jobs, 1)
        self.assertEqual(h.replies(), ["2 sí\n".encode(), b"1 no\n"])
        self.assertEqual(h.replies(transport2), [b"4 no\n"])

    def test_manyPipelinedRequestsInOneWrite(self) -> None:
        h = Harness()
        messages = [f"m{i}{'x' * (i % 7)}" for i in range(2000)]
        h.send("".join(m + "\n" for m in messages).encode())
        expected = [evaluate_batch([(m.encode(), "", 0)], False)[0][0] for m in messages]
        self.assertEqual(h.replies(), expected)

    def test_replyAfterConnectionLostIsDropped(self) -> None:
        h = Harness()
        h.pool.hold = True
        h.send(b"abc2a\n")
        h.protocol.connectionLost(None)
        h.pool.release()
        self.assertEqual(h.transport.value(), b"")
        self.assertEqual(len(h.connections), 0)


class JournalTests(SynchronousTestCase):
    """
    The reply waits for the journal; a failing journal gives ERR.
    """

    def test_replyOnlyAfterCommit(self) -> None:
        h = Harness()
        h.pool.hold = True
        h.send(b"abc2a\n")
        self.assertEqual(h.transport.value(), b"")
        h.pool.release()
        self.assertEqual(h.replies(), ["2 sí\n".encode()])

    def test_everyRequestRecorded(self) -> None:
        h = Harness(maxLine=10)
        h.send(b"abc2a\n\n\xff\n" + b"y" * 11 + b"\n")
        records = h.journal.records
        self.assertEqual(
            [(r.protocol, r.peer, r.port) for r in records],
            [(PROTOCOL_COUNT, "192.0.2.7", 40000)] * 4,
        )
        self.assertEqual(
            [(r.message, r.count, r.prime, r.error) for r in records],
            [
                ("abc2a", 2, True, None),
                ("", None, None, "empty message"),
                (b"\xff", None, None, "invalid UTF-8"),
                ("y" * 11, None, None, "line too long"),
            ],
        )

    def test_journalUnavailableThenRecovers(self) -> None:
        h = Harness()
        h.journal.failing = True
        h.send(b"abc2a\n")
        self.assertEqual(h.replies(), [b"ERR journal unavailable\n"])
        self.assertFalse(h.transport.disconnecting)
        h.journal.failing = False
        h.send(b"abc2a\n")
        self.assertEqual(h.replies()[1:], ["2 sí\n".encode()])


class TimeoutTests(SynchronousTestCase):
    """
    Idle connections are closed; requests, not stray bytes, keep them open.
    """

    def test_oneTimerForAllConnections(self) -> None:
        # One sweep, not a DelayedCall per connection moved on every request.
        h = Harness(timeout=5)
        for _ in range(50):
            _transport, protocol = h.connect()
            h.send(b"a\n", protocol)
        self.assertEqual(len(h.reactor.getDelayedCalls()), 1)

    def test_idleConnectionClosed(self) -> None:
        h = Harness(timeout=5)
        h.reactor.advance(4.9)
        self.assertFalse(h.transport.disconnecting)
        h.reactor.advance(0.2)
        self.assertTrue(h.transport.disconnecting)

    def test_completeRequestResetsTimer(self) -> None:
        h = Harness(timeout=5)
        h.reactor.advance(4)
        h.send(b"a\n")
        h.reactor.advance(4)
        self.assertFalse(h.transport.disconnecting)

    def test_partialLineDoesNotResetTimer(self) -> None:
        h = Harness(timeout=5)
        for _ in range(6):
            h.send(b"a")
            h.reactor.advance(1)
        self.assertTrue(h.transport.disconnecting)

    def test_pendingReplyIsNotIdle(self) -> None:
        h = Harness(timeout=5)
        h.pool.hold = True
        h.send(b"a\n")
        h.reactor.advance(6)
        self.assertFalse(h.transport.disconnecting)
        h.pool.release()
        self.assertEqual(h.replies(), [b"1 no\n"])

    def test_clientNotReadingRepliesIsDroppedAfterTimeout(self) -> None:
        h = Harness(timeout=5)
        aborted = recordAborts(h)
        h.send(b"a\n")
        h.protocol.pauseProducing()  # the transport's send buffer is full
        h.reactor.advance(4.9)
        self.assertEqual(aborted, [])
        h.reactor.advance(0.2)
        self.assertEqual(aborted, [True])

    def test_closeThatCannotDrainIsAbortedAfterTimeout(self) -> None:
        h = Harness(timeout=5, maxLine=4)
        aborted = recordAborts(h)
        h.protocol.pauseProducing()
        h.send(b"toolong\n")
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(aborted, [])
        h.reactor.advance(5.1)
        self.assertEqual(aborted, [True])

    def test_closingUnregistersTheProducer(self) -> None:
        # A paused producer left registered makes Twisted wait for it
        # instead of closing the connection once the buffer drains.
        h = Harness(closeAfterReply=True)
        self.assertIs(h.transport.producer, h.protocol)
        h.send(b"abc2a\n")
        self.assertTrue(h.transport.disconnecting)
        self.assertIsNone(h.transport.producer)
        h.protocol.writeConnectionLost()

    def test_zeroDisablesTimeout(self) -> None:
        h = Harness(timeout=0)
        h.reactor.advance(3600)
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_connectionLostCancelsTimer(self) -> None:
        h = Harness(timeout=5)
        h.protocol.connectionLost(None)
        self.assertEqual(h.reactor.getDelayedCalls(), [])


class OriginalModeAndLimitsTests(SynchronousTestCase):
    """
    --close-after-reply and --max-connections.
    """

    def test_closeAfterFirstReply(self) -> None:
        h = Harness(closeAfterReply=True)
        h.send(b"abc2a\nabacada\n")
        self.assertEqual(h.replies(), ["2 sí\n".encode()])
        self.assertTrue(h.transport.disconnecting)

    def test_serverBusyPastMaxConnections(self) -> None:
        h = Harness(maxConnections=2)
        h.connect()
        transport3, _ = h.connect()
        self.assertEqual(transport3.value(), b"ERR server busy\n")
        self.assertTrue(transport3.disconnecting)
        self.assertEqual(len(h.connections), 2)
        h.protocol.connectionLost(None)
        transport4, _ = h.connect()
        self.assertEqual(transport4.value(), b"")
        self.assertEqual(len(h.connections), 2)

    def test_serverBusyPastMaxPerPeer(self) -> None:
        h = Harness(maxPerPeer=2)
        h.connect()
        transport3, _ = h.connect()
        self.assertEqual(transport3.value(), b"ERR server busy\n")
        other, _ = h.connect(host="198.51.100.1")
        self.assertEqual(other.value(), b"")
        self.assertEqual(len(h.connections), 3)

    def test_closeWhenDoneAnswersThenCloses(self) -> None:
        h = Harness()
        h.pool.hold = True
        h.send(b"abc2a\n")
        closed = h.connections.closeAll()
        self.assertNoResult(closed)
        self.assertEqual(h.transport.producerState, "paused")
        h.send(b"ignored\n")
        h.pool.release()
        self.assertEqual(h.replies(), ["2 sí\n".encode()])
        self.assertTrue(h.transport.disconnecting)
        h.protocol.connectionLost(None)
        self.successResultOf(closed)


class FlowControlTests(SynchronousTestCase):
    """
    A client that does not read its replies stops being read.
    """

    def test_tooManyUnansweredRequestsPausesReading(self) -> None:
        h = Harness()
        h.pool.hold = True
        h.send(b"a\n" * protocolModule.MAX_PENDING)
        self.assertEqual(h.transport.producerState, "paused")
        h.pool.release()
        self.assertEqual(h.transport.producerState, "producing")
        self.assertEqual(len(h.replies()), protocolModule.MAX_PENDING)

    def test_fullWriteBufferPausesReading(self) -> None:
        h = Harness()
        self.assertIs(h.transport.producer, h.protocol)
        h.protocol.pauseProducing()
        self.assertEqual(h.transport.producerState, "paused")
        h.protocol.resumeProducing()
        self.assertEqual(h.transport.producerState, "producing")


class FakeSocket:
    """
    A socket whose C{send} takes at most C{takes} bytes a call.
    """

    def __init__(self, takes: int) -> None:
        self.takes = takes
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        n = min(self.takes, len(data))
        self.sent.append(bytes(data[:n]))
        return n

    def fileno(self) -> int:
        return -1

    def setblocking(self, flag: bool) -> None:
        pass


class WriteNowTests(SynchronousTestCase):
    """
    L{primecount.server.transport.write_now} sends at once when it can, and otherwise
    leaves the bytes to the transport's buffer, in order.
    """

    def connection(self, takes: int) -> tuple[Any, FakeSocket, MemoryReactor]:
        reactor = MemoryReactor()
        sock = FakeSocket(takes)
        conn = tcp.Connection(sock, Protocol(), reactor=reactor)  # type: ignore[arg-type]
        conn.connected = 1
        return conn, sock, reactor

    def test_sentAtOnceWithoutWatchingForWrites(self) -> None:
        conn, sock, reactor = self.connection(100)
        write_now(conn, b"2 s\xc3\xad\n")
        self.assertEqual(sock.sent, [b"2 s\xc3\xad\n"])
        self.assertEqual(reactor.getWriters(), [])

    def test_restOfPartialSendIsBuffered(self) -> None:
        conn, sock, reactor = self.connection(3)
        write_now(conn, b"hello")
        self.assertEqual(sock.sent, [b"hel"])
        self.assertEqual(conn._tempDataBuffer, [b"lo"])
        self.assertEqual(reactor.getWriters(), [conn])

    def test_queuedBytesKeepTheirPlace(self) -> None:
        conn, sock, _reactor = self.connection(100)
        conn.write(b"first")
        write_now(conn, b"second")
        self.assertEqual(sock.sent, [])
        conn.doWrite()
        self.assertEqual(sock.sent, [b"firstsecond"])

    def test_tlsAlwaysUsesWrite(self) -> None:
        # With TLS started on the connection, bytes must go through write()
        # (the TLS layer); sending directly would put plaintext on the wire.
        conn, sock, _ = self.connection(100)
        written: list[bytes] = []
        conn.TLS = True
        conn.write = written.append  # type: ignore[method-assign]
        write_now(conn, b"x")
        self.assertEqual(sock.sent, [])
        self.assertEqual(written, [b"x"])

    def test_otherTransportsUseWrite(self) -> None:
        transport = StringTransport()
        write_now(transport, b"x")
        self.assertEqual(transport.value(), b"x")


class ProxyHeaderTests(SynchronousTestCase):
    """
    Behind HAProxy (C{--listen haproxy:…}): the PROXY header (version 1 or
    2) names the client for limits and the journal; half-close keeps
    working.
    """

    HEADER = b"PROXY TCP4 198.51.100.7 203.0.113.1 40123 5050\r\n"

    def test_clientAddressFromTheHeader(self) -> None:
        h = Harness(proxyHeader=True)
        h.send(self.HEADER + b"abc2a\n")
        self.assertEqual(h.replies(), ["2 sí\n".encode()])
        [record] = h.journal.records
        self.assertEqual((record.peer, record.port), ("198.51.100.7", 40123))

    def test_headerSplitAcrossReads(self) -> None:
        h = Harness(proxyHeader=True)
        h.send(self.HEADER[:9])
        h.send(self.HEADER[9:] + b"abc")
        h.send(b"2a\n")
        self.assertEqual(h.replies(), ["2 sí\n".encode()])

    def test_unknownKeepsTheConnectionsPeer(self) -> None:
        h = Harness(proxyHeader=True)
        h.send(b"PROXY UNKNOWN\r\nabc2a\n")
        self.assertEqual(h.journal.records[0].peer, "192.0.2.7")

    def test_badHeaderIsRefused(self) -> None:
        for header in (b"GET / HTTP/1.0\r\n", b"PROXY TCP4 1.2.3.4\r\n", b"x" * 200):
            h = Harness(proxyHeader=True)
            h.send(header)
            self.assertEqual(h.replies(), [b"ERR bad PROXY header\n"], header)
            self.assertTrue(h.transport.disconnecting)
            self.assertEqual(len(h.connections), 0)

    def test_perPeerLimitUsesTheHeaderAddress(self) -> None:
        h = Harness(proxyHeader=True, maxPerPeer=1)
        h.send(self.HEADER)
        second, protocol2 = h.connect()
        h.send(self.HEADER, protocol2)
        self.assertEqual(second.value(), b"ERR server busy\n")
        third, protocol3 = h.connect()
        h.send(b"PROXY TCP4 198.51.100.8 203.0.113.1 40124 5050\r\na\n", protocol3)
        self.assertEqual(third.value(), b"1 no\n")
        self.assertEqual(len(h.connections), 2)

    def test_halfCloseStillAnswersTheLastRequest(self) -> None:
        h = Harness(proxyHeader=True)
        h.send(self.HEADER + b"abc2a\nabacada")
        h.protocol.readConnectionLost()
        h.reactor.advance(0)
        self.assertEqual(h.replies(), ["2 sí\n".encode(), b"4 no\n"])

    def test_version2NamesTheClient(self) -> None:
        from tests.unit.test_proxyheader import v2_inet

        h = Harness(proxyHeader=True)
        h.send(v2_inet(("2001:db8::7", 40123), ("2001:db8::1", 5050)) + b"abc2a\n")
        self.assertEqual(h.replies(), ["2 sí\n".encode()])
        [record] = h.journal.records
        self.assertEqual((record.peer, record.port), ("2001:db8::7", 40123))

    def test_version2SplitAtEveryByte(self) -> None:
        from tests.unit.test_proxyheader import v2_inet

        data = v2_inet(("198.51.100.9", 1234), ("203.0.113.1", 5050)) + b"a\n"
        h = Harness(proxyHeader=True)
        for i in range(len(data)):
            h.send(data[i : i + 1])
        self.assertEqual(h.replies(), [b"1 no\n"])
        self.assertEqual(h.journal.records[0].peer, "198.51.100.9")

    def test_version2LocalKeepsTheConnectionsPeer(self) -> None:
        from tests.unit.test_proxyheader import v2

        h = Harness(proxyHeader=True)
        h.send(v2(0, 0x00, b"") + b"a\n")
        self.assertEqual(h.replies(), [b"1 no\n"])
        self.assertEqual(h.journal.records[0].peer, "192.0.2.7")

    def test_version2UnixClientIsJournalledAsUnix(self) -> None:
        from tests.unit.test_proxyheader import v2_unix

        h = Harness(proxyHeader=True)
        h.send(v2_unix(b"/run/client.sock", b"/run/haproxy.sock") + b"a\n")
        record = h.journal.records[0]
        self.assertEqual((record.peer, record.port), ("unix:/run/client.sock", 0))

    FORGED = b"PROXY TCP4 6.6.6.6 1.2.3.4 1111 2222\r\nabc2a\n"

    def test_untrustedProxyIsRefused(self) -> None:
        """
        A connection to a C{haproxy:} listener from an address that is not
        a trusted proxy gets C{ERR untrusted proxy} and is closed: nothing
        it sends is read, nothing is journalled, it is never counted open,
        and the refusal is counted in the metrics.
        """
        from primecount.metrics.prometheus import Metrics
        from tests.unit.test_metrics import scrape, value

        metrics = Metrics()
        h = Harness(proxyHeader=True, metrics=metrics, maxPerPeer=1)
        for n in range(3):
            transport, protocol = h.connect("203.0.113.9")
            h.send(self.FORGED.replace(b"6.6.6.6", f"6.6.6.{n}".encode()), protocol)
            self.assertEqual(h.replies(transport), [b"ERR untrusted proxy\n"])
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost(None)
        self.assertEqual(h.journal.records, [])
        self.assertEqual(len(h.connections), 0)
        samples = scrape(metrics)
        count = value(
            samples, "primecount_requests_total", protocol="count", outcome="untrusted_proxy"
        )
        self.assertEqual(count, 3)

    def test_byDefaultOnlyLoopbackIsTrusted(self) -> None:
        """
        The issue's forgery: from 127.0.0.3 a header naming 6.6.6.6 is
        refused under the default C{--trusted-proxies}; the same bytes from
        127.0.0.1 (HAProxy on this host) are served and journalled under the
        client the header names.
        """
        h = Harness(proxyHeader=True, trustedProxies=TRUSTED_BY_DEFAULT)
        forger, protocol = h.connect("127.0.0.3")
        h.send(self.FORGED, protocol)
        self.assertEqual(h.replies(forger), [b"ERR untrusted proxy\n"])
        proxy, protocol = h.connect("127.0.0.1")
        h.send(self.FORGED, protocol)
        self.assertEqual(h.replies(proxy), ["2 sí\n".encode()])
        self.assertEqual(
            [(r.peer, r.port, r.message) for r in h.journal.records],
            [("6.6.6.6", 1111, "abc2a")],
        )

    def test_untrustedRefusalsAreLoggedOncePerEpisode(self) -> None:
        """
        Many refusals make one warning, naming the address and the option.
        """
        from tests.unit.test_episodes import capture, misbehaviour_lines

        events = capture(self)
        h = Harness(proxyHeader=True)  # trusts its own peer, 192.0.2.7
        for _ in range(50):
            _, protocol = h.connect("127.0.0.3")
            h.send(self.FORGED, protocol)
        said = misbehaviour_lines(events)
        self.assertEqual(len(said), 1, said)
        text = said[0]["log_format"].format(**said[0])
        self.assertIn("127.0.0.3", text)
        self.assertIn("--trusted-proxies 192.0.2.7", text)
        self.assertEqual(said[0]["log_level"], LogLevel.warn)

    def test_refusalsAreLoggedInTheFactorysEpisodes(self) -> None:
        """
        The factory logs through the episodes it is handed, not only the
        connections' own.
        """
        from twisted.internet.task import Clock
        from twisted.logger import Logger

        from primecount.metrics.episodes import Episodes
        from tests.unit.test_episodes import capture

        events = capture(self)
        mine = Episodes(Logger(namespace="test.mine"), Clock())
        h = Harness(proxyHeader=True, episodes=mine)
        _, protocol = h.connect("127.0.0.3")
        h.send(self.FORGED, protocol)
        said = [e for e in events if e.get("log_namespace") == "test.mine"]
        self.assertEqual([e["peer"] for e in said], ["127.0.0.3"])
        self.assertIs(h.factory.episodes, mine)

    def test_unixSocketPeersNeedTheUnixWord(self) -> None:
        """
        On a UNIX-socket listener the peer has no address: it is trusted
        only when C{--trusted-proxies} says C{unix}.
        """
        for words, replies in (
            ("127.0.0.1,::1", [b"ERR untrusted proxy\n"]),
            ("unix", ["2 sí\n".encode()]),
        ):
            h = Harness(proxyHeader=True, trustedProxies=TrustedProxies.parse(words))
            peer = UNIXAddress(None)
            protocol = h.factory.buildProtocol(peer)
            transport = StringTransport(peerAddress=peer, hostAddress=UNIXAddress(b"/run/pc.sock"))
            protocol.makeConnection(transport)
            h.send(self.FORGED, protocol)
            self.assertEqual(h.replies(transport), replies, words)

    def test_hostileVersion2IsRefused(self) -> None:
        from tests.unit.test_proxyheader import v2

        # A datagram family, then a length too short for TCP4 addresses.
        for header in (v2(1, 0x12, bytes(12)), v2(1, 0x11, bytes(4))):
            h = Harness(proxyHeader=True)
            h.send(header + b"a\n")
            self.assertEqual(h.replies(), [b"ERR bad PROXY header\n"], header)
            self.assertTrue(h.transport.disconnecting)


class ReadFramingTests(SynchronousTestCase):
    """
    C{--framing read}: the connection's first read is its one message, no
    newline needed, as the original server's C{recv(1024)}; one reply, then
    the connection closes.
    """

    WINDOW = 0.005  # --framing read:5

    def harness(self, **factoryArgs: Any) -> Harness:
        factoryArgs.setdefault("readWindow", self.WINDOW)
        return Harness(framing=protocolModule.READ, **factoryArgs)

    def test_byDefaultTheFirstReadIsTheMessage(self) -> None:
        h = self.harness(readWindow=protocolModule.READ_WINDOW)
        h.send(b"abc2a")
        self.assertEqual(h.replies(), ["2 sí\n".encode()])
        self.assertTrue(h.transport.disconnecting)

    def test_byDefaultALaterSegmentIsNotPartOfIt(self) -> None:
        h = self.harness(readWindow=protocolModule.READ_WINDOW)
        h.send(b"abc")
        h.send(b"2a")
        self.assertEqual(h.replies(), [b"1 no\n"])
        self.assertEqual([r.message for r in h.journal.records], ["abc"])

    def test_byDefaultOverMaxLineInTheFirstRead(self) -> None:
        h = self.harness(readWindow=protocolModule.READ_WINDOW, maxLine=8)
        h.send(b"x" * 9)
        self.assertEqual(h.replies(), [b"ERR line too long\n"])

    def test_messageWithoutNewlineAnsweredAfterTheReadWindow(self) -> None:
        h = self.harness()
        h.send(b"abc2a")
        self.assertEqual(h.replies(), [])
        h.reactor.advance(self.WINDOW)
        h.reactor.advance(0)
        self.assertEqual(h.replies(), ["2 sí\n".encode()])
        self.assertTrue(h.transport.disconnecting)
        [record] = h.journal.records
        self.assertEqual((record.message, record.count, record.prime), ("abc2a", 2, True))

    def test_newlineEndsTheMessageAtOnce(self) -> None:
        for data in (b"abc2a\n", b"abc2a\r\n", b"  abc2a \n"):
            h = self.harness()
            h.send(data)
            self.assertEqual(h.replies(), ["2 sí\n".encode()], data)
            self.assertTrue(h.transport.disconnecting)

    def test_bytesAfterTheFirstNewlineAreIgnored(self) -> None:
        h = self.harness()
        h.send(b"abc2a\nabacada\n")
        h.reactor.advance(self.WINDOW)
        self.assertEqual(h.replies(), ["2 sí\n".encode()])
        self.assertEqual(len(h.journal.records), 1)

    def test_halfCloseEndsTheMessageAtOnce(self) -> None:
        h = self.harness()
        h.send(b"abc2a")
        h.protocol.readConnectionLost()
        h.reactor.advance(0)
        self.assertEqual(h.replies(), ["2 sí\n".encode()])
        self.assertTrue(h.transport.disconnecting)
        h.reactor.advance(self.WINDOW)
        self.assertEqual(len(h.journal.records), 1)

    def test_segmentsWithinTheWindowAreOneMessage(self) -> None:
        h = self.harness()
        h.send(b"abc")
        h.reactor.advance(self.WINDOW / 2)
        h.send(b"2a")
        self.assertEqual(h.replies(), [])
        h.reactor.advance(self.WINDOW / 2)
        h.reactor.advance(0)
        self.assertEqual(h.replies(), ["2 sí\n".encode()])

    def test_windowCountsFromTheFirstBytes(self) -> None:
        # A later segment does not extend the window: a slow trickle cannot
        # hold the connection open beyond it.
        h = self.harness()
        h.send(b"abc")
        h.reactor.advance(self.WINDOW * 0.9)
        h.send(b"2")
        h.reactor.advance(self.WINDOW * 0.1)
        h.reactor.advance(0)
        self.assertEqual(h.replies(), [b"1 no\n"])  # "abc2": one "2"
        h.send(b"a")
        self.assertEqual(h.replies(), [b"1 no\n"])
        self.assertEqual([r.message for r in h.journal.records], ["abc2"])

    def test_errorsAreTheLineProtocolsOnes(self) -> None:
        for data, reply in (
            (b"\xff\xfe", b"ERR invalid UTF-8\n"),
            (b" \t ", b"ERR empty message\n"),
            (b"\n", b"ERR empty message\n"),
        ):
            h = self.harness()
            h.send(data)
            h.reactor.advance(self.WINDOW)
            h.reactor.advance(0)
            self.assertEqual(h.replies(), [reply], data)
            self.assertTrue(h.transport.disconnecting)
            self.assertEqual([r.error for r in h.journal.records], [reply[4:-1].decode()])

    def test_overMaxLineIsLineTooLongAtOnce(self) -> None:
        h = self.harness(maxLine=8)
        h.send(b"x" * 5)
        h.send(b"x" * 4)
        self.assertEqual(h.replies(), [b"ERR line too long\n"])
        self.assertTrue(h.transport.disconnecting)
        h.reactor.advance(self.WINDOW)
        self.assertEqual(len(h.journal.records), 1)

    def test_messageAtMaxLineAccepted(self) -> None:
        h = self.harness(maxLine=8)
        h.send(b"x" * 8)
        h.reactor.advance(self.WINDOW)
        h.reactor.advance(0)
        self.assertEqual(h.replies(), [b"8 no\n"])

    def test_longerThanTheOriginals1024Bytes(self) -> None:
        h = self.harness()
        h.send(b"a" * 1500)
        h.reactor.advance(self.WINDOW)
        h.reactor.advance(0)
        self.assertEqual(h.replies(), [b"1500 no\n"])

    def test_halfCloseWithNothingSentClosesWithoutReply(self) -> None:
        h = self.harness()
        h.protocol.readConnectionLost()
        h.reactor.advance(self.WINDOW)
        self.assertEqual(h.transport.value(), b"")
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.journal.records, [])

    def test_idleConnectionStillTimesOut(self) -> None:
        h = self.harness(timeout=5.0)
        h.reactor.advance(5.0)
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.transport.value(), b"")

    def test_connectionLostCancelsTheWindow(self) -> None:
        h = self.harness()
        h.send(b"abc")
        h.protocol.connectionLost()
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_replyWaitsForTheJournal(self) -> None:
        h = self.harness()
        h.pool.hold = True
        h.send(b"abc2a\n")
        self.assertEqual(h.replies(), [])
        self.assertFalse(h.transport.disconnecting)
        h.pool.release()
        self.assertEqual(h.replies(), ["2 sí\n".encode()])
        self.assertTrue(h.transport.disconnecting)

    def test_afterAProxyHeader(self) -> None:
        h = self.harness(proxyHeader=True)
        h.send(ProxyHeaderTests.HEADER)
        h.reactor.advance(self.WINDOW * 10)
        self.assertEqual(h.replies(), [])
        h.send(b"abc2a")
        h.reactor.advance(self.WINDOW)
        h.reactor.advance(0)
        self.assertEqual(h.replies(), ["2 sí\n".encode()])
        self.assertEqual(h.journal.records[0].peer, "198.51.100.7")

    def test_proxyHeaderAndMessageInOneRead(self) -> None:
        h = self.harness(proxyHeader=True)
        h.send(ProxyHeaderTests.HEADER + b"abc2a")
        h.reactor.advance(self.WINDOW)
        h.reactor.advance(0)
        self.assertEqual(h.replies(), ["2 sí\n".encode()])

    def test_unknownFramingRefused(self) -> None:
        self.assertRaises(ValueError, Harness, framing="lines")
