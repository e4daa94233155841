# -*- test-case-name: tests.unit.test_tap -*-
"""
The twistd plugin's options and the service it builds, in process (twistd
itself runs in L{tests.system.test_tap_process}).
"""

from __future__ import annotations

import io
import os
import pwd
import signal
import socket
import sys
from dataclasses import FrozenInstanceError
from typing import Any

from twisted.application.service import IService
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.systemd import ListenFDs
from twisted.python.threadpool import ThreadPool
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from primecount import compose, tap
from primecount.compose import (
    SINGLE,
    SPARE_DESCRIPTORS,
    SUPERVISOR,
    WORKER,
    Framing,
    JournalSettings,
    Limits,
    Listening,
    Processes,
    Settings,
)
from primecount.core.fdlimit import raise_open_files_limit
from primecount.core.proxyheader import TrustedProxies
from primecount.journal import JournalURL, NullJournal
from primecount.server import placement
from primecount.server.listeners import COUNT, METRICS, PROXY, RANGE, Listener, Wanted
from primecount.server.metricsport import METRICS_CONNECTIONS
from primecount.server.service import STOP_SIGNALS, OneStopSignal, ignored
from primecount.workers.environment import WorkerEnvironment
from tests.unit.test_episodes import capture


def declared_options() -> set[str]:
    """
    The long names of every option C{twistd primecount} declares.
    """
    declared = {row[0] for row in tap.PrimecountOptions.optFlags}
    declared |= {row[0] for row in tap.PrimecountOptions.optParameters}
    return declared | {"listen"}


#: Every option of C{twistd primecount}: a value it accepts, what that value
#: becomes, and (for those that can be given a bad value) a bad value and
#: what the error says. L{OptionsTests.test_everyOptionIsCovered} keeps
#: this table complete.
EVERY_OPTION: dict[str, tuple[list[str], object, list[str] | None, str | None]] = {
    "port": (["--port", "6000"], 6000, ["--port", "http"], "a whole number from 0 to 65535"),
    "interface": (["--interface", "::1"], "::1", None, None),
    "listen": (["--listen", "tcp:7000"], ["tcp:7000"], ["--listen", "bogus:1"], "bad --listen"),
    "threads": (["--threads", "3"], 3, ["--threads", "0"], "a whole number, at least 1"),
    "timeout": (["--timeout", "2.5"], 2.5, ["--timeout", "soon"], "a number of seconds"),
    "max-line": (["--max-line", "80"], 80, ["--max-line", "1.5"], "a whole number, at least 1"),
    "framing": (["--framing", "read:5"], ("read", 0.005), ["--framing", "lines"], "line, read"),
    "max-connections": (
        ["--max-connections", "7"], 7, ["--max-connections", "-5"], "a whole number, at least 1",
    ),
    "journal": (
        ["--journal", "none"], JournalURL("none"), ["--journal", "mysql://x"], "expected sqlite:",
    ),
    "max-memory": (
        ["--max-memory", "64M"], 64 << 20, ["--max-memory", "lots"], "--max-memory wants MiB",
    ),
    "max-per-peer": (
        ["--max-per-peer", "2"], 2, ["--max-per-peer", "many"], "a whole number, at least 1",
    ),
    "shutdown-timeout": (
        ["--shutdown-timeout", "0"], 0.0, ["--shutdown-timeout", "-1"], "a number of seconds",
    ),
    "workers": (["--workers", "2"], 2, ["--workers", ""], "a whole number, at least 1"),
    "cpu-affinity": (
        ["--cpu-affinity", "none"], placement.Placement("none"),
        ["--cpu-affinity", "first"], "CPU numbers such as 0,1",
    ),
    "metrics-port": (
        ["--metrics-port", "0"], 0, ["--metrics-port", "abc"], "a whole number from 0 to 65535",
    ),
    "metrics-interface": (["--metrics-interface", "0.0.0.0"], "0.0.0.0", None, None),
    "range-port": (
        ["--range-port", "5051"], 5051, ["--range-port", "-1"], "a whole number from 0 to 65535",
    ),
    "close-after-reply": (
        ["--close-after-reply"], 1, ["--close-after-reply=yes"], "must not have an argument",
    ),
    "journal-fsync": (
        ["--journal-fsync"], 1, ["--journal-fsync=yes"], "must not have an argument",
    ),
    "trusted-proxies": (
        ["--trusted-proxies", "192.0.2.10,2001:db8::/32,unix"],
        TrustedProxies.parse("192.0.2.10,2001:db8::/32,unix"),
        ["--trusted-proxies", "haproxy.example"], "not an IP address, a network (CIDR)",
    ),
    "journal-durability": (
        ["--journal-durability", "disk"], "disk", ["--journal-durability", "all"],
        "process, disk, standby",
    ),
    "journal-timeout": (
        ["--journal-timeout", "2.5"], 2.5, ["--journal-timeout", "0"], "at least 0.1",
    ),
}  # fmt: skip


class OptionsTests(SynchronousTestCase):
    """
    L{tap.PrimecountOptions}: defaults, coercion, cross-checks.
    """

    def parse(self, *args: str) -> tap.PrimecountOptions:
        options = tap.PrimecountOptions()
        options.parseOptions(["--journal", "none", *args])
        return options

    def test_defaults(self) -> None:
        options = tap.PrimecountOptions()
        os.makedirs(self.mktemp())
        self.assertEqual(options["journal"], "sqlite:primecount.sqlite3")
        options = self.parse()
        self.assertEqual(
            {
                k: options[k]
                for k in (
                    "port",
                    "interface",
                    "threads",
                    "timeout",
                    "max-line",
                    "close-after-reply",
                    "max-connections",
                    "max-per-peer",
                    "max-memory",
                    "shutdown-timeout",
                    "range-port",
                    "cpu-affinity",
                    "trusted-proxies",
                    "metrics-interface",
                )
            },
            {
                "port": 5050,
                "interface": "0.0.0.0",
                "threads": 10,
                "timeout": 5.0,
                "max-line": 16384,
                "close-after-reply": 0,
                "max-connections": 10000,
                "max-per-peer": None,
                "max-memory": 96 << 20,
                "shutdown-timeout": 10.0,
                "range-port": None,
                "cpu-affinity": placement.Placement("auto"),
                "trusted-proxies": TrustedProxies.parse("127.0.0.1,::1"),
                "metrics-interface": "127.0.0.1",
            },
        )
        self.assertEqual(options["listen"], ["tcp:5050:interface=0.0.0.0:backlog=4096"])
        self.assertEqual(options["journal"], JournalURL("none"))

    def test_portAndInterfaceMakeTheListenDescription(self) -> None:
        self.assertEqual(
            self.parse("-p", "6000", "--interface", "::")["listen"],
            ["tcp:6000:interface=\\:\\::backlog=4096"],
        )

    def test_listenRepeatableAndReplacesPort(self) -> None:
        options = self.parse(
            "--port", "6000", "--listen", "tcp:7000", "--listen", "unix:/tmp/pc.sock"
        )
        self.assertEqual(options["listen"], ["tcp:7000", "unix:/tmp/pc.sock"])

    def test_badValues(self) -> None:
        for args in (
            ["--threads", "0"],
            ["--threads", "x"],
            ["--timeout", "-1"],
            ["--max-line", "0"],
            ["--max-connections", "-5"],
            ["--port", "65536"],
            ["--journal", "postgres:x"],
            ["--listen", "nonsense:1"],
            ["--cpu-affinity", "first"],
            ["--cpu-affinity", "100000"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *args)

    def test_cpuAffinityValues(self) -> None:
        self.assertEqual(
            self.parse("--cpu-affinity", "none")["cpu-affinity"], placement.Placement("none")
        )
        self.assertEqual(
            self.parse("--cpu-affinity", "0")["cpu-affinity"], placement.Placement("list", (0,))
        )

    def test_makeServiceDoesNotPinTheCaller(self) -> None:
        before = os.sched_getaffinity(0)
        tap.makeService(self.parse("--listen", "tcp:0", "--cpu-affinity", "0"))
        self.assertEqual(os.sched_getaffinity(0), before)

    def test_framing(self) -> None:
        self.assertEqual(self.parse()["framing"], ("line", 0.0))
        self.assertEqual(self.parse("--framing", "read")["framing"], ("read", 0.0))
        self.assertEqual(self.parse("--framing", "read:5")["framing"], ("read", 0.005))
        for bad in ("lines", "line:5", "read:", "read:x", "read:-1", "read:1001", "read:nan"):
            self.assertRaises(usage.UsageError, self.parse, "--framing", bad)

    def test_framingReachesTheFactory(self) -> None:
        top = tap.makeService(self.parse("--framing", "read:5", "--port", "0"))
        factories = [lsn.factory for lsn in top if hasattr(lsn, "factory")]
        self.assertTrue(factories)
        for factory in factories:
            self.assertEqual((factory.framing, factory.readWindow), ("read", 0.005))

    def test_badValueNamesTheOptionAndTheRule(self) -> None:
        whole = "a whole number, at least 1"
        port = "a whole number from 0 to 65535"
        seconds = "a number of seconds, 0 or more"
        for option, value, rule in (
            ("threads", "abc", whole),
            ("threads", "0", whole),
            ("max-line", "1.5", whole),
            ("max-connections", "-5", whole),
            ("max-per-peer", "many", whole),
            ("workers", "", whole),
            ("port", "65536", port),
            ("port", "http", port),
            ("metrics-port", "abc", port),
            ("range-port", "-1", port),
            ("timeout", "soon", seconds),
            ("timeout", "nan", seconds),
            ("shutdown-timeout", "-1", seconds),
            ("journal", "postgres:x", "expected sqlite:PATH"),
            ("framing", "lines", "line, read or read:MS"),
            ("cpu-affinity", "first", "CPU numbers such as 0,1"),
        ):
            e = self.assertRaises(usage.UsageError, self.parse, f"--{option}", value)
            message = str(e)
            self.assertTrue(message.startswith(f"--{option}"), message)
            self.assertIn(rule, message)
            self.assertNotIn("invalid literal", message)
            self.assertNotIn("enforcement", message)

    def test_everyOptionIsCovered(self) -> None:
        self.assertEqual(set(EVERY_OPTION), declared_options())

    def test_everyOptionCoercesItsValue(self) -> None:
        for option, (args, value, _bad, _message) in EVERY_OPTION.items():
            self.assertEqual(self.parse(*args)[option], value, option)

    def test_everyBadValueIsAUsageErrorNamingTheOption(self) -> None:
        for option, (_args, _value, bad, message) in EVERY_OPTION.items():
            if bad is None:
                continue  # any text: an interface that is no address fails to listen
            assert message is not None
            e = self.assertRaises(usage.UsageError, self.parse, *bad)
            self.assertIn(f"--{option}", str(e))
            self.assertIn(message, str(e))

    def test_everyBadValueExitsWithStatus1AndOneLine(self) -> None:
        """
        As twistd parses them (L{tap.Options}), a bad value is one line on
        stderr and exit status 1.
        """
        for option, (_args, _value, bad, _message) in EVERY_OPTION.items():
            if bad is None:
                continue
            stderr = io.StringIO()
            self.patch(sys, "stderr", stderr)
            e = self.assertRaises(
                SystemExit, tap.Options().parseOptions, ["--journal", "none", *bad]
            )
            self.assertEqual(e.code, 1, option)
            lines = stderr.getvalue().splitlines()
            self.assertEqual(len(lines), 1, (option, lines))
            self.assertTrue(lines[0].startswith("twistd primecount: error: "), lines)
            self.assertIn(f"--{option}", lines[0])

    def test_systemdWithoutSocketsNamesTheCause(self) -> None:
        saved = {
            k: os.environ.pop(k)
            for k in ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID")
            if k in os.environ
        }
        self.addCleanup(os.environ.update, saved)
        e = self.assertRaises(
            usage.UsageError, self.parse, "--listen", "systemd:domain=INET:index=0"
        )
        self.assertIn("systemd passed no such socket", str(e))

    def test_durabilityDefaultsPerBackend(self) -> None:
        """
        C{--journal-durability} defaults to C{process} for SQLite and
        C{standby} for PostgreSQL; C{--journal-fsync}, its older spelling,
        means C{disk} for SQLite and C{standby} for PostgreSQL.
        """
        from primecount import journal

        self.assertEqual(self.parse()["journal-durability"], "process")
        for scheme, level, fsync, expected in (
            ("sqlite", None, False, "process"),
            ("sqlite", None, True, "disk"),
            ("postgresql", None, False, "standby"),
            ("postgresql", None, True, "standby"),
            ("postgresql", "process", False, "process"),
            ("postgresql", "disk", False, "disk"),
            ("sqlite", "disk", False, "disk"),
        ):
            self.assertEqual(journal.resolve_durability(scheme, level, fsync), expected)

    def test_durabilityStandbyRefusedForSQLite(self) -> None:
        path = os.path.abspath(self.mktemp())
        error = self.assertRaises(
            usage.UsageError,
            self.parse,
            "--journal",
            f"sqlite:{path}",
            "--journal-durability",
            "standby",
        )
        self.assertIn("standby needs a PostgreSQL journal", str(error))
        self.assertNotIn("\n", str(error))

    def test_durabilityAndFsyncTogetherRefused(self) -> None:
        error = self.assertRaises(
            usage.UsageError, self.parse, "--journal-fsync", "--journal-durability", "disk"
        )
        self.assertIn("older spelling", str(error))

    def test_timeoutZeroAllowed(self) -> None:
        self.assertEqual(self.parse("--timeout", "0")["timeout"], 0.0)

    def test_unwritableJournalFailsAtParse(self) -> None:
        options = tap.PrimecountOptions()
        e = self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            ["--journal", "sqlite:/nonexistent/dir/j.sqlite3"],
        )
        self.assertIn("cannot write journal", str(e))

    def test_sqliteJournalPathIsAbsolute(self) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        options = tap.PrimecountOptions()
        options.parseOptions(["--journal", f"sqlite:{base}/j.sqlite3"])
        self.assertEqual(options["journal"].path, f"{base}/j.sqlite3")
        self.assertTrue(os.path.exists(f"{base}/j.sqlite3"))

    def test_unwritableWorkerPartFailsAtParse(self) -> None:
        """
        With C{--workers N} every worker's part of the SQLite journal is
        checked at the start: one an earlier run left unwritable (here a
        directory in its place) stops the start with a line naming it.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(f"{base}/j.sqlite3.worker1")
        options = tap.PrimecountOptions()
        e = self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            ["--workers", "2", "--journal", f"sqlite:{base}/j.sqlite3"],
        )
        self.assertIn("j.sqlite3.worker1", str(e))
        # One process writes only the file it was given.
        tap.PrimecountOptions().parseOptions(["--journal", f"sqlite:{base}/j.sqlite3"])

    def test_haproxyOnAUnixSocketNeedsUnixTrusted(self) -> None:
        """
        A C{haproxy:} listener on a UNIX socket (bound, or passed by
        systemd) stops the start unless C{--trusted-proxies} trusts UNIX
        sockets: its peers have no address to trust.
        """
        for option, description in (
            ("listen", "haproxy:unix:/run/pc.sock"),
            ("range-listen", "haproxy:unix:/run/pc-range.sock:mode=660"),
        ):
            e = self.assertRaises(usage.UsageError, self.parse, f"--{option}", description)
            self.assertTrue(str(e).startswith(f"--{option} {description}: "), str(e))
            self.assertIn("add 'unix' to --trusted-proxies", str(e))
        self.patch(endpoints._SystemdParser, "_sddaemon", ListenFDs([0], ["pc"]))
        description = "haproxy:systemd:domain=UNIX:index=0"
        self.assertRaises(usage.UsageError, self.parse, "--listen", description)
        self.parse("--listen", description, "--trusted-proxies", "127.0.0.1,unix")
        # A plain UNIX-socket listener reads no header: nothing to trust.
        self.parse("--listen", "unix:/run/pc.sock")

    def test_ownerIsWhomTwistdSwitchesTo(self) -> None:
        """
        Our options are a twistd subcommand: twistd's C{--uid}/C{--gid},
        parsed first, say whom the server runs as after binding; without
        C{--gid}, the user's own group, as twistd does.
        """
        nobody = pwd.getpwnam("nobody")
        for twistd, gid in (
            (["--uid", "nobody"], nobody.pw_gid),
            (["--uid", str(nobody.pw_uid), "--gid", "0"], 0),
        ):
            config = ServerOptions()
            config.parseOptions([*twistd, "primecount", "--journal", "none"])
            owner = config.subOptions.owner
            self.assertEqual((owner.uid, owner.gid), (nobody.pw_uid, gid), twistd)
        config = ServerOptions()
        config.parseOptions(["primecount", "--journal", "none"])
        self.assertIsNone(config.subOptions.owner)

    def test_makeServiceComposesListeners(self) -> None:
        service = tap.makeService(self.parse("--listen", "tcp:0", "--listen", "tcp:0"))
        self.assertTrue(IService.providedBy(service))
        self.assertEqual([lsn.label for lsn in service.listeners], ["count", "count"])
        self.assertIsInstance(service.journal, NullJournal)


class ThreadedMemoryReactor(MemoryReactorClock):
    """
    A memory reactor with the thread pool calls of C{IReactorThreads}
    (the pool is never started).
    """

    def __init__(self) -> None:
        super().__init__()
        self.poolSize: int | None = None
        self.pool = ThreadPool()

    def suggestThreadPoolSize(self, size: int) -> None:
        self.poolSize = size

    def getThreadPool(self) -> ThreadPool:
        return self.pool


class MakeServiceTests(SynchronousTestCase):
    """
    L{tap.makeService} composes the server on the reactor it is given.
    """

    def test_listenersOnTheGivenReactor(self) -> None:
        from primecount.server.countprotocol import CountFactory
        from primecount.server.metricsport import MetricsGate
        from primecount.server.rangeprotocol import RangeFactory

        options = tap.PrimecountOptions()
        options.parseOptions(
            ["--journal", "none", "--interface", "127.0.0.1", "--port", "5151",
             "--range-port", "5152", "--metrics-port", "5153", "--threads", "3",
             "--cpu-affinity", "none", "--shutdown-timeout", "4",
             "--metrics-interface", "::1"]
        )  # fmt: skip
        reactor = ThreadedMemoryReactor()
        top = tap.makeService(options, reactor)
        self.assertEqual(reactor.tcpServers, [])
        top.privilegedStartService()
        top.startService()
        self.assertEqual(
            [(port, backlog, interface) for port, _f, backlog, interface in reactor.tcpServers],
            [(5151, 4096, "127.0.0.1"), (5152, 4096, "127.0.0.1"), (5153, 4096, "::1")],
        )
        for (_p, factory, _b, _i), kind in zip(
            reactor.tcpServers, (CountFactory, RangeFactory, MetricsGate), strict=True
        ):
            self.assertIsInstance(factory, kind)
        self.assertEqual(reactor.poolSize, 3)
        self.assertEqual(len(reactor.triggers["before"]["shutdown"]), 1)
        stopped = top.stopService()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertFalse(top.running)
        # The stop's deadline timers are cancelled once it is done.
        self.assertEqual(reactor.getDelayedCalls(), [])


class SettingsTests(SynchronousTestCase):
    """
    L{tap.settings}: the parsed options unpacked once into typed
    L{Settings}, with what they imply for this process computed there.
    """

    def setUp(self) -> None:
        #: What the open-files limit can be raised to (L{None}: as far as
        #: asked).
        self.openFiles: int | None = None
        self.patch(
            compose,
            "raise_open_files_limit",
            lambda wanted: wanted if self.openFiles is None else self.openFiles,
        )

    def parse(self, *args: str, environ: dict[str, str] | None = None) -> tap.PrimecountOptions:
        options = tap.PrimecountOptions(environ={} if environ is None else environ)
        options.parseOptions(["--journal", "none", *args])
        return options

    def warnings(self, events: list[dict[str, Any]]) -> list[str]:
        return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]

    def test_defaults(self) -> None:
        settings = tap.settings(self.parse())
        self.assertEqual(
            settings,
            Settings(
                listening=Listening(
                    listeners=(
                        Wanted(COUNT, "tcp:5050:interface=0.0.0.0:backlog=4096", "--port 5050"),
                    ),
                    metrics=None,
                    trustedProxies=TrustedProxies.parse("127.0.0.1,::1"),
                ),
                limits=Limits(
                    maxConnections=10000,
                    maxPerPeer=None,
                    maxMemory=96 << 20,
                    maxLine=16384,
                    timeout=5.0,
                    shutdownTimeout=10.0,
                ),
                framing=Framing(kind="line", readWindow=0.0, closeAfterReply=False),
                journal=JournalSettings(url=JournalURL("none"), durability="process", timeout=5.0),
                processes=Processes(
                    workers=1,
                    threads=10,
                    placement=placement.Placement("auto"),
                    owner=None,
                    argv=("--journal", "none"),
                    worker=None,
                ),
            ),
        )
        self.assertEqual(settings.shape, SINGLE)
        self.assertFalse(settings.listening.servesRange)
        self.assertEqual(
            settings.summary(),
            "threads=10 timeout=5 max-line=16384 max-connections=10000 max-per-peer=off "
            "max-memory=96MiB cpu-affinity=auto close-after-reply=off framing=line journal=none",
        )

    def test_derivedValues(self) -> None:
        """
        The listeners in order (C{--listen}, C{--range-port},
        C{--range-listen}; C{haproxy:} ones labelled for the header), the
        metrics listener apart; the connection limit is what the open-files
        limit allows once the spare descriptors and the metrics port's are
        set aside, with one warning naming both numbers.
        """
        self.openFiles = 1000
        events = capture(self)
        args = (
            "--listen", "tcp:0:interface=127.0.0.1",
            "--listen", "haproxy:tcp:0:interface=127.0.0.1",
            "--interface", "127.0.0.1", "--range-port", "0",
            "--range-listen", "tcp:0:interface=127.0.0.2",
            "--metrics-port", "0", "--metrics-interface", "::1",
            "--framing", "read:5", "--close-after-reply",
            "--max-connections", "5000", "--max-per-peer", "2", "--max-memory", "64M",
            "--max-line", "80", "--timeout", "2.5", "--shutdown-timeout", "0",
            "--threads", "3", "--cpu-affinity", "none",
        )  # fmt: skip
        settings = tap.settings(self.parse(*args))
        self.assertEqual(
            settings.listening,
            Listening(
                listeners=(
                    Wanted(
                        COUNT, "tcp:0:interface=127.0.0.1", "--listen 'tcp:0:interface=127.0.0.1'"
                    ),
                    Wanted(
                        PROXY,
                        "tcp:0:interface=127.0.0.1",
                        "--listen 'haproxy:tcp:0:interface=127.0.0.1'",
                    ),
                    Wanted(RANGE, "tcp:0:interface=127.0.0.1:backlog=4096", "--range-port 0"),
                    Wanted(
                        RANGE,
                        "tcp:0:interface=127.0.0.2",
                        "--range-listen 'tcp:0:interface=127.0.0.2'",
                    ),
                ),
                metrics=Wanted(METRICS, "tcp:0:interface=\\:\\:1:backlog=4096", "--metrics-port 0"),
                trustedProxies=TrustedProxies.parse("127.0.0.1,::1"),
            ),
        )
        self.assertTrue(settings.listening.servesRange)
        effective = 1000 - SPARE_DESCRIPTORS - METRICS_CONNECTIONS
        self.assertEqual(
            settings.limits,
            Limits(
                maxConnections=effective,
                maxPerPeer=2,
                maxMemory=64 << 20,
                maxLine=80,
                timeout=2.5,
                shutdownTimeout=0.0,
            ),
        )
        self.assertEqual(
            settings.framing, Framing(kind="read", readWindow=0.005, closeAfterReply=True)
        )
        self.assertEqual(
            settings.processes,
            Processes(
                workers=1,
                threads=3,
                placement=placement.Placement("none"),
                owner=None,
                argv=("--journal", "none", *args),
                worker=None,
            ),
        )
        [warning] = self.warnings(events)
        self.assertIn(f"serving at most {effective} connections at once", warning)
        self.assertIn("not --max-connections 5000", warning)

    def test_worker(self) -> None:
        """
        A worker's settings: what its supervisor told it in the
        environment, its own part of the SQLite journal, and its connection
        limit without a second warning (its supervisor gave it); the checks
        its supervisor made (every journal part) are not made again.
        """
        self.openFiles = 1000
        events = capture(self)
        base = os.path.abspath(self.mktemp())  # no such directory
        told = WorkerEnvironment({"count0": (3, 2)}, "/run/pc/connections", 2, 1, 4242)
        args = ["--workers", "2", "--journal", f"sqlite:{base}/j.sqlite3", "--metrics-port", "0"]
        self.assertRaises(usage.UsageError, tap.PrimecountOptions(environ={}).parseOptions, args)
        options = tap.PrimecountOptions(environ={"HOME": "/", **told.encode()})
        options.parseOptions(args)
        settings = tap.settings(options)
        self.assertEqual(settings.shape, WORKER)
        self.assertEqual(
            settings.processes,
            Processes(
                workers=2,
                threads=10,
                placement=placement.Placement("auto"),
                owner=None,
                argv=tuple(args),
                worker=told,
            ),
        )
        self.assertEqual(
            settings.journal,
            JournalSettings(
                url=JournalURL("sqlite", f"{base}/j.sqlite3.worker1"),
                durability="process",
                timeout=5.0,
            ),
        )
        # The metrics port is the supervisor's: nothing set aside for it.
        self.assertEqual(settings.limits.maxConnections, 1000 - SPARE_DESCRIPTORS)
        self.assertEqual(self.warnings(events), [])

    def test_supervisor(self) -> None:
        """
        The supervisor of C{--workers N} warns when the open-files limit
        (which its workers inherit) lowers the connection limit; its journal
        is the one given.
        """
        self.openFiles = 1000
        events = capture(self)
        settings = tap.settings(self.parse("--workers", "3", "--metrics-port", "0"))
        self.assertEqual(settings.shape, SUPERVISOR)
        self.assertEqual(settings.limits.maxConnections, 1000 - SPARE_DESCRIPTORS)
        self.assertEqual(settings.journal.url, JournalURL("none"))
        self.assertEqual(len(self.warnings(events)), 1)

    def test_frozen(self) -> None:
        settings = tap.settings(self.parse())
        self.assertRaises(FrozenInstanceError, setattr, settings.limits, "maxConnections", 1)
        self.assertRaises(FrozenInstanceError, setattr, settings, "journal", None)

    def test_makeServiceLeavesTheOptionsAsParsed(self) -> None:
        """
        Nothing changes the options once they are parsed: not the
        connection limit the open-files limit lowers, not a worker's
        journal part; the process is built from its settings.
        """
        self.openFiles = 1000
        self.patch(compose, "die_with_parent", lambda supervisor: None)
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        told = WorkerEnvironment({"count0": (3, 2)}, f"{base}/connections", 2, 1, os.getpid())
        for environ, workers, journal in (
            ({}, "1", f"{base}/j.sqlite3"),
            (told.encode(), "2", f"{base}/j.sqlite3.worker1"),
        ):
            options = self.parse(
                "--workers", workers, "--journal", f"sqlite:{base}/j.sqlite3",
                "--max-connections", "5000", "--port", "0", environ=environ,
            )  # fmt: skip
            before = dict(options)
            top = tap.makeService(options, ThreadedMemoryReactor())
            self.assertEqual(dict(options), before)
            self.assertEqual(top.journal.path, journal)
            self.assertEqual(top.connections.maxConnections, 1000 - SPARE_DESCRIPTORS)
        self.assertEqual([lsn.description for lsn in top.listeners], ["fd:3"])


class ListenerTests(SynchronousTestCase):
    """
    L{Listener}: a bind that fails is one line and exit status 1; the
    address is known once bound.
    """

    def test_cannotListenIsOneLogLineAndExit1(self) -> None:
        class Taken:
            def listen(self, factory: object) -> defer.Deferred[object]:
                return defer.fail(CannotListenError("127.0.0.1", 5050, OSError("in use")))

        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        listener = Listener("count", "tcp:5050", Taken(), object(), "--port 5050")
        e = self.assertRaises(SystemExit, listener.privilegedStartService)
        self.assertEqual(e.code, 1)
        critical = [ev for ev in events if ev.get("log_level") == LogLevel.critical]
        self.assertEqual(len(critical), 1)
        self.assertEqual(
            formatEvent(critical[0]), "--port 5050: cannot listen on 127.0.0.1:5050: in use"
        )

    def test_addressOnceBound(self) -> None:
        bound: defer.Deferred[object] = defer.Deferred()

        class Later:
            def listen(self, factory: object) -> defer.Deferred[object]:
                return bound

        listener = Listener("range", "tcp:0", Later(), object())
        listener.startService()
        address = listener.address()
        self.assertNoResult(address)
        reactor = MemoryReactorClock()
        bound.callback(reactor.listenTCP(5051, object(), interface="::1"))
        self.assertEqual(self.successResultOf(address), "range [::1]:5051")

    def test_adoptedSocketIsClosedAfterTheReactorAdoptsIt(self) -> None:
        reactor = MemoryReactorClock()
        fd = os.open(os.devnull, os.O_RDONLY)
        factory = object()
        listener = Listener.adopted(reactor, "count", fd, socket.AF_INET, factory)
        listener.startService()
        self.assertEqual(reactor.adoptedPorts, [(fd, socket.AF_INET, factory)])
        self.assertRaises(OSError, os.fstat, fd)
        self.assertEqual(self.successResultOf(listener.address()), "count 0.0.0.0:1234")
        self.assertIsNone(listener.stopService())


class OpenFilesTests(SynchronousTestCase):
    """
    The open-files limit is raised toward what --max-connections needs.
    """

    def test_raisesSoftLimitUpToHard(self) -> None:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        wanted = 512 if hard == resource.RLIM_INFINITY else min(512, hard)
        self.assertEqual(raise_open_files_limit(wanted), wanted)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], wanted)


class FakeSignalReactor:
    """
    Stands in for the reactor whose bound methods Twisted installs as
    signal handlers.
    """

    def __init__(self) -> None:
        self.stops: list[int] = []
        self.whenRunning: list[Any] = []

    def sigTerm(self, signum: int, frame: Any) -> None:
        self.stops.append(signum)

    def sigInt(self, signum: int, frame: Any) -> None:
        self.stops.append(signum)

    def callWhenRunning(self, f: Any) -> None:
        self.whenRunning.append(f)

    def callFromThread(self, f: Any) -> None:
        f()

    def stop(self) -> None:
        self.stops.append(0)


class OneStopSignalTests(SynchronousTestCase):
    """
    L{OneStopSignal}: the first stop signal is the only one.
    """

    def setUp(self) -> None:
        for signum in STOP_SIGNALS:
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
        self.reactor = FakeSignalReactor()
        signal.signal(signal.SIGTERM, self.reactor.sigTerm)
        signal.signal(signal.SIGINT, self.reactor.sigInt)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    def test_secondSignalIgnored(self) -> None:
        """
        Once the reactor runs, the first SIGTERM stops it and the later
        SIGTERMs and SIGINTs are ignored.
        """
        OneStopSignal(self.reactor).startService()
        [install] = self.reactor.whenRunning
        install()
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # type: ignore[operator]
        self.assertEqual(self.reactor.stops, [signal.SIGTERM])
        for signum in STOP_SIGNALS:
            self.assertIs(signal.getsignal(signum), ignored)

    def test_sighupStopsAsSigtermDoes(self) -> None:
        """
        SIGHUP, instant death by default, stops the reactor (in order), is
        what twistd re-raises once it has stopped, and makes the later stop
        signals ignored.
        """
        OneStopSignal(self.reactor).install()
        signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)  # type: ignore[operator]
        self.assertEqual(self.reactor.stops, [0])
        self.assertEqual(self.reactor._exitSignal, signal.SIGHUP)  # type: ignore[attr-defined]
        for signum in STOP_SIGNALS:
            self.assertIs(signal.getsignal(signum), ignored)

    def test_sighupIgnoredStaysIgnored(self) -> None:
        """
        Under C{nohup} SIGHUP is ignored, and stays so.
        """
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        OneStopSignal(self.reactor).install()
        self.assertEqual(signal.getsignal(signal.SIGHUP), signal.SIG_IGN)

    def test_otherHandlersLeftAlone(self) -> None:
        """
        A handler that is not this reactor's (a debugger's, a test
        runner's) is not wrapped.
        """

        def mine(signum: int, frame: Any) -> None:
            pass

        signal.signal(signal.SIGINT, mine)
        OneStopSignal(self.reactor).install()
        self.assertIs(signal.getsignal(signal.SIGINT), mine)
        self.assertIsNot(signal.getsignal(signal.SIGTERM), self.reactor.sigTerm)

    def test_makeServiceAddsIt(self) -> None:
        """
        Every shape of the server gets it.
        """
        options = tap.Options()
        options.parseOptions(["--journal", "none", "--port", "0"])
        top = tap.makeService(options, ThreadedMemoryReactor())
        self.assertEqual([type(s) for s in top if isinstance(s, OneStopSignal)], [OneStopSignal])
