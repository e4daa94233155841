"""
What C{twistd primecount} says when it cannot start: one line naming the
option (or file) and the cause, the same with and without C{--workers}.
The same messages from real processes are in
L{tests.system.test_messages_process}.
"""

from __future__ import annotations

import errno
import os

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.error import CannotListenError
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from primecount import tap
from primecount.server.listeners import (
    COUNT,
    METRICS,
    PROXY,
    RANGE,
    RANGE_PROXY,
    cannot_listen,
    listener_text,
    tcp_address,
)


class OptionErrorTests(SynchronousTestCase):
    """
    Bad values of C{twistd primecount}'s options, as L{usage.UsageError}.
    """

    def refused(self, *args: str) -> str:
        options = tap.PrimecountOptions()
        e = self.assertRaises(usage.UsageError, options.parseOptions, ["--journal", "none", *args])
        return str(e)

    def test_listenPortNotANumber(self) -> None:
        self.assertEqual(
            self.refused("--listen", "tcp:abc"),
            "bad --listen 'tcp:abc': the port 'abc' is not a number (e.g. tcp:5050)",
        )

    def test_listenPortOutOfRange(self) -> None:
        """
        Twisted takes C{tcp:99999} and fails at the bind with a traceback.
        """
        self.assertEqual(
            self.refused("--listen", "tcp:99999"),
            "bad --listen 'tcp:99999': the port 99999 is not from 0 to 65535",
        )

    def test_listenParameterNotANumber(self) -> None:
        self.assertEqual(
            self.refused("--range-listen", "tcp:5051:backlog=many"),
            "bad --range-listen 'tcp:5051:backlog=many': backlog='many' is not a whole number",
        )

    def test_listenUnknownParameter(self) -> None:
        self.assertEqual(
            self.refused("--listen", "tcp:5050:interfase=127.0.0.1"),
            "bad --listen 'tcp:5050:interfase=127.0.0.1': tcp: has no parameter 'interfase'",
        )

    def test_listenUnknownType(self) -> None:
        self.assertIn(
            "bad --listen 'tpc:5050': unknown endpoint type 'tpc': expected tcp:PORT, ",
            self.refused("--listen", "tpc:5050"),
        )

    def test_listenBarePort(self) -> None:
        self.assertEqual(
            self.refused("--listen", "5050"),
            "bad --listen '5050': no endpoint type: did you mean tcp:5050 (or --port 5050)?",
        )

    def test_listenMissingCertificate(self) -> None:
        missing = os.path.abspath(self.mktemp())
        self.assertEqual(
            self.refused("--listen", f"ssl:5443:privateKey={missing}"),
            f"bad --listen 'ssl:5443:privateKey={missing}': "
            f"cannot read {missing}: No such file or directory",
        )

    def test_portGivenTwice(self) -> None:
        """
        Before, the second listener failed to bind: C{cannot listen on
        tcp:5058:…: [Errno 98] Address already in use}, naming no option.
        """
        self.assertEqual(
            self.refused("--port", "5058", "--range-port", "5058"),
            "port 5058 is given twice: --port 5058 and --range-port 5058 "
            "(each listener needs a port of its own)",
        )
        self.assertEqual(
            self.refused("--port", "5058", "--metrics-port", "5058", "--workers", "2"),
            "port 5058 is given twice: --port 5058 and --metrics-port 5058 "
            "(each listener needs a port of its own)",
        )
        self.assertEqual(
            self.refused(
                "--listen",
                "haproxy:tcp:6000:interface=127.0.0.1",
                "--range-listen",
                "tcp:6000",
            ),
            "port 6000 is given twice: --listen 'haproxy:tcp:6000:interface=127.0.0.1' "
            "and --range-listen 'tcp:6000' (each listener needs a port of its own)",
        )

    def test_samePortOnOtherAddressesIsFine(self) -> None:
        options = tap.PrimecountOptions()
        options.parseOptions(
            [
                "--journal", "none",
                "--listen", "tcp:6000:interface=127.0.0.1",
                "--listen", "tcp:6000:interface=127.0.0.2",
                "--port", "0", "--range-port", "0", "--metrics-port", "0",
            ]
        )  # fmt: skip
        self.assertEqual(len(options["listen"]), 2)

    def test_journalBarePathIsAnSQLiteFile(self) -> None:
        """
        C{--journal /srv/x.sqlite3}, what people type first, was refused as
        an unknown journal.
        """
        path = os.path.join(os.path.abspath(self.mktemp()), "x.sqlite3")
        os.makedirs(os.path.dirname(path))
        options = tap.PrimecountOptions()
        options.parseOptions(["--journal", path])
        self.assertEqual(str(options["journal"]), f"sqlite:{path}")
        self.assertTrue(os.path.exists(path))

    def test_journalUnknownScheme(self) -> None:
        self.assertEqual(
            self.refused("--journal", "mysql://db/pc"),
            "--journal: unknown journal 'mysql://db/pc': expected sqlite:PATH or a file path "
            "(an SQLite file), postgresql://USER@HOST:PORT/DB or none",
        )

    def test_journalDirectoryMissing(self) -> None:
        missing = os.path.abspath(self.mktemp())
        self.assertEqual(
            self.refused("--journal", f"{missing}/j.sqlite3"),
            f"cannot write journal {missing}/j.sqlite3: directory {missing} does not exist",
        )


class ListenerTextTests(SynchronousTestCase):
    """
    L{cannot_listen} and L{listener_text}: where, what and why.
    """

    def test_addressInUse(self) -> None:
        error = CannotListenError("127.0.0.1", 9109, OSError(errno.EADDRINUSE, "in use"))
        self.assertEqual(
            cannot_listen("--metrics-port 9109", error),
            "--metrics-port 9109: cannot listen on 127.0.0.1:9109: "
            "the address is already in use (another program listens there)",
        )

    def test_privilegedPort(self) -> None:
        error = CannotListenError("", 80, OSError(errno.EACCES, "Permission denied"))
        self.assertEqual(
            cannot_listen("--port 80", error),
            "--port 80: cannot listen on 0.0.0.0:80: permission denied "
            "(a port below 1024 needs root or CAP_NET_BIND_SERVICE)",
        )

    def test_otherErrorKeepsItsWords(self) -> None:
        error = CannotListenError("::", 5050, OSError(errno.EINVAL, "Invalid argument"))
        self.assertEqual(
            cannot_listen("--port 5050", error),
            "--port 5050: cannot listen on [::]:5050: Invalid argument",
        )

    def test_kinds(self) -> None:
        here = IPv4Address("TCP", "127.0.0.1", 5050)
        self.assertEqual(listener_text(COUNT, "tcp:5050", here), "count 127.0.0.1:5050")
        self.assertEqual(
            listener_text(COUNT, "ssl:5050:privateKey=k.pem", here), "count 127.0.0.1:5050 (TLS)"
        )
        self.assertEqual(
            listener_text(COUNT, "unix:/run/pc.sock", UNIXAddress(b"/run/pc.sock")),
            "count /run/pc.sock (UNIX)",
        )
        self.assertEqual(
            listener_text(PROXY, "tcp:5050", here), "count 127.0.0.1:5050 (PROXY header)"
        )
        self.assertEqual(
            listener_text(RANGE_PROXY, "ssl:5050:privateKey=k.pem", here),
            "range 127.0.0.1:5050 (PROXY header, TLS)",
        )
        self.assertEqual(
            listener_text(RANGE, "systemd:domain=INET:index=0", here),
            "range 127.0.0.1:5050 (socket from systemd)",
        )
        self.assertEqual(
            listener_text(METRICS, "tcp:5050", here), "metrics http://127.0.0.1:5050/metrics"
        )

    def test_tcpAddress(self) -> None:
        self.assertEqual(tcp_address("tcp:5050:interface=127.0.0.1"), ("127.0.0.1", "5050"))
        self.assertEqual(tcp_address("tcp6:port=5050:interface=\\:\\:1"), ("::1", "5050"))
        self.assertEqual(tcp_address("haproxy:tcp6:5050"), ("::", "5050"))
        self.assertIsNone(tcp_address("unix:/run/pc.sock"))
