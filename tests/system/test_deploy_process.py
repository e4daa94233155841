"""
Tests for the files in C{deploy/}: each is checked by the tool that reads
it (HAProxy, promtool, systemd-analyze), and the systemd socket activation
is run. The metric names they use are checked in L{tests.unit.test_deploy}.

Tools: C{haproxy}, C{promtool} and C{systemd-analyze} (Debian packages
C{haproxy}, C{prometheus} and C{systemd}, which C{.ci/debian-packages}
installs) must be present when C{CI=true}, and the tests fail without them;
elsewhere they are skipped, saying so. C{systemd-analyze verify} needs no
running systemd: it works in a container.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from twisted.internet import endpoints
from twisted.python.systemd import ListenFDs
from twisted.trial.unittest import TestCase

from primecount.testing.processes import require_program
from primecount.testing.twistd import TWISTD
from tests.helpers import recv_lines, start_shipped_haproxy
from tests.unit.test_deploy import DEPLOY, dashboardQueries

#: How long one validation tool may run.
TOOL_TIMEOUT = 60


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """
    Run a validation tool, capturing its output.
    """
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL
    )


def recv_until_closed_or(sock: socket.socket, end: bytes) -> bytes:
    """
    What C{sock} receives until it ends with C{end}, or the peer closes or
    resets it (then possibly nothing), within 10 s.
    """
    sock.settimeout(10)
    data = b""
    while not data.endswith(end):
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


class HAProxyConfigTests(TestCase):
    """
    C{deploy/haproxy.cfg}.
    """

    def setUp(self) -> None:
        self.haproxy = require_program("haproxy", "haproxy")

    def check(self, path: Path | str) -> subprocess.CompletedProcess[str]:
        return run([self.haproxy, "-c", "-f", str(path)])

    def test_valid(self) -> None:
        """
        C{haproxy -c} accepts the file, without warnings.
        """
        result = self.check(DEPLOY / "haproxy.cfg")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertNotIn("WARNING", result.stdout + result.stderr)

    def test_checkCatchesErrors(self) -> None:
        """
        The check is not vacuous: the same file with a misspelt server
        option fails it.
        """
        broken = Path(self.mktemp())
        text = (DEPLOY / "haproxy.cfg").read_text()
        broken.write_text(text.replace("send-proxy-v2 check", "send-proxy-v9 check"))
        self.assertNotEqual(self.check(broken).returncode, 0)

    def test_startsUnderAContainersOpenFilesLimit(self) -> None:
        """
        The shipped file starts, as shipped, where the open-files hard limit
        is 20000 (a common container default), and relays a client's bytes
        after a PROXY protocol v2 header. With a fixed C{maxconn 20000} it
        stopped: C{Cannot raise FD limit to 40020, limit is 20000}, although
        C{haproxy -c} passed.
        """
        with socket.socket() as host:
            host.bind(("127.0.0.1", 0))
            host.listen()
            host.settimeout(10)
            port = host.getsockname()[1]
            process, front, _ = start_shipped_haproxy(self, self.haproxy, [port, port])
            with socket.create_connection(("127.0.0.1", front), timeout=5) as client:
                client.sendall(b"abc2a\n")
                data = b""
                # Health checks connect and close without a request (with
                # at most a LOCAL PROXY header): skip them.
                while not data.endswith(b"abc2a\n"):
                    relayed, _ = host.accept()
                    with relayed:
                        data = recv_until_closed_or(relayed, b"abc2a\n")
        self.assertTrue(data.startswith(b"\r\n\r\n\x00\r\nQUIT\n"), data)
        self.assertTrue(data.endswith(b"abc2a\n"), data)
        self.assertIsNone(process.poll())

    def test_sendsProxyV2WithChecks(self) -> None:
        """
        Every server gets C{send-proxy-v2} and a health check, and failed
        connections are retried and redispatched.
        """
        text = (DEPLOY / "haproxy.cfg").read_text()
        lines = [line.split("#")[0].split() for line in text.splitlines()]
        defaults = next(line for line in lines if line[:1] == ["default-server"])
        self.assertIn("send-proxy-v2", defaults)
        self.assertIn("check", defaults)
        self.assertIn(["mode", "tcp"], lines)
        self.assertIn(["option", "redispatch"], lines)
        self.assertIn("retries", [line[0] for line in lines if line])
        self.assertEqual(len([line for line in lines if line[:1] == ["server"]]), 2)


class PrometheusTests(TestCase):
    """
    C{deploy/prometheus.yml}, C{deploy/alerts.yml} and its unit tests
    C{deploy/alerts_test.yml}.
    """

    def setUp(self) -> None:
        self.promtool = require_program("promtool", "prometheus")

    def assertTool(self, *argv: str) -> None:
        result = run([self.promtool, *argv])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_rules(self) -> None:
        """
        C{promtool check rules} accepts the alert rules.
        """
        self.assertTool("check", "rules", str(DEPLOY / "alerts.yml"))

    def test_rulesFire(self) -> None:
        """
        C{promtool test rules}: each alert fires on its synthetic bad series
        and not on the healthy ones.
        """
        self.assertTool("test", "rules", str(DEPLOY / "alerts_test.yml"))

    def test_config(self) -> None:
        """
        C{promtool check config} accepts the scrape configuration (and the
        rule file it names).
        """
        self.assertTool("check", "config", str(DEPLOY / "prometheus.yml"))

    def test_dashboardQueriesParse(self) -> None:
        """
        Every query of the Grafana dashboard is valid PromQL (checked by
        promtool as recording rules, Grafana's variables replaced).
        """
        dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
        exprs = dashboardQueries(dashboard)
        self.assertGreater(len(exprs), 10)
        rules = Path(self.mktemp())
        concrete = [
            expr.replace("$__rate_interval", "5m").replace("$instance", ".*") for expr in exprs
        ]
        rules.write_text(
            json.dumps(
                {
                    "groups": [
                        {
                            "name": "dashboard",
                            "rules": [
                                {"record": f"dashboard:query{n}", "expr": expr}
                                for n, expr in enumerate(concrete)
                            ],
                        }
                    ]
                }
            )
        )
        self.assertTool("check", "rules", str(rules))


def execStart(unit: str) -> list[str]:
    """
    The words of the C{ExecStart=} line of a unit file (continuations
    joined).
    """
    text = unit.replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    return shlex.split(line[len("ExecStart=") :])


def environment(unit: str) -> dict[str, str]:
    """
    The variables a unit file's C{Environment=} lines set (its defaults).
    """
    return dict(
        line[len("Environment=") :].split("=", 1)
        for line in unit.splitlines()
        if line.startswith("Environment=")
    )


def expand(words: list[str], variables: dict[str, str]) -> list[str]:
    """
    C{words} with each C{${NAME}} replaced by its value, as systemd does
    (C{$NAME} words, split at spaces, are dropped: the tests leave
    C{PRIMECOUNT_OPTIONS} empty).
    """
    expanded = []
    for word in words:
        if word.startswith("$") and not word.startswith("${"):
            continue
        for name, value in variables.items():
            word = word.replace("${" + name + "}", value)
        expanded.append(word)
    return expanded


class SystemdTests(TestCase):
    """
    C{deploy/primecount.service} and C{deploy/primecount.socket}.
    """

    def test_verify(self) -> None:
        """
        C{systemd-analyze verify} accepts both units, without a warning (an
        unknown key is only a warning). C{/opt/primecount/bin/twistd} is
        replaced by an executable that exists here, since verify checks it.
        """
        analyze = require_program("systemd-analyze", "systemd")
        directory = Path(self.mktemp())
        directory.mkdir()
        for name in ("primecount.service", "primecount.socket"):
            text = (DEPLOY / name).read_text()
            (directory / name).write_text(
                text.replace("/opt/primecount/bin/twistd", sys.executable)
            )
        result = run(
            [
                analyze,
                "verify",
                str(directory / "primecount.socket"),
                str(directory / "primecount.service"),
            ]
        )
        self.assertEqual(
            (result.returncode, result.stdout + result.stderr), (0, ""), "systemd-analyze verify"
        )

    def test_socketMatchesListen(self) -> None:
        """
        The service adopts the socket the socket unit makes: C{domain=INET}
        for an IPv4 C{ListenStream}, through the C{haproxy:} listener.
        """
        socketUnit = (DEPLOY / "primecount.socket").read_text()
        listen = re.search(r"^ListenStream=(.*)$", socketUnit, re.M)
        assert listen is not None
        argv = execStart((DEPLOY / "primecount.service").read_text())
        description = argv[argv.index("--listen") + 1]
        self.assertTrue(description.startswith("haproxy:systemd:"), description)
        domain = "INET" if re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+", listen.group(1)) else "INET6"
        self.assertIn(f"domain={domain}", description)
        self.assertIn("FileDescriptorName=count", socketUnit)

    def test_onlyHAProxyIsTrusted(self) -> None:
        """
        The service believes PROXY headers only from HAProxy's address, and
        the socket unit lets only that address connect: the same address,
        not loopback (HAProxy runs on another machine), not any.
        """
        service = (DEPLOY / "primecount.service").read_text()
        socketUnit = (DEPLOY / "primecount.socket").read_text()
        argv = execStart(service)
        self.assertEqual(argv[argv.index("--trusted-proxies") + 1], "${PRIMECOUNT_TRUSTED_PROXIES}")
        trusted = environment(service)["PRIMECOUNT_TRUSTED_PROXIES"]
        self.assertEqual(trusted, "192.0.2.10")
        self.assertIn("\nIPAddressDeny=any\n", socketUnit)
        self.assertIn(f"\nIPAddressAllow={trusted}\n", socketUnit)

    def test_filesArePrivateAndMetricsBindLoopback(self) -> None:
        """
        What the service creates is its user's alone (the journal holds
        every client's address and message), and the metrics port binds
        loopback unless told otherwise.
        """
        service = (DEPLOY / "primecount.service").read_text()
        self.assertIn("\nUMask=0077\n", service)
        self.assertIn("\nStateDirectoryMode=0700\n", service)
        argv = execStart(service)
        self.assertEqual(
            argv[argv.index("--metrics-interface") + 1], "${PRIMECOUNT_METRICS_INTERFACE}"
        )
        self.assertEqual(environment(service)["PRIMECOUNT_METRICS_INTERFACE"], "127.0.0.1")

    def test_execStartOptions(self) -> None:
        """
        primecount accepts the options of C{ExecStart} (with a socket handed
        over as systemd would, and the unit's default journal moved to a
        scratch directory).
        """
        from primecount.tap import Options

        service = (DEPLOY / "primecount.service").read_text()
        argv = execStart(service)
        self.assertEqual(argv[:4], ["/opt/primecount/bin/twistd", "-n", "--pidfile=", "primecount"])
        scratch = os.path.abspath(self.mktemp())
        os.mkdir(scratch)
        variables = environment(service)
        variables["PRIMECOUNT_JOURNAL"] = variables["PRIMECOUNT_JOURNAL"].replace(
            "/var/lib/primecount", scratch
        )
        args = expand(argv[4:], variables)
        listening = socket.socket()
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        self.patch(
            endpoints._SystemdParser,
            "_sddaemon",
            ListenFDs([listening.fileno()], ["count"]),
        )
        options = Options()
        options.parseOptions(args)
        self.assertEqual(options["listen"], ["haproxy:systemd:domain=INET:index=0"])
        self.assertEqual(options["metrics-port"], 9100)
        self.assertEqual(options["metrics-interface"], "127.0.0.1")
        self.assertEqual(str(options["trusted-proxies"]), "192.0.2.10")
        self.assertEqual(str(options["journal"].path), os.path.join(scratch, "primecount.sqlite3"))


#: Hands a listening socket to a program as systemd does: descriptor 3,
#: C{LISTEN_PID} (its own pid, known only after the fork), C{LISTEN_FDS},
#: C{LISTEN_FDNAMES}. Arguments: the socket's descriptor here, then the
#: program's argv.
SOCKET_ACTIVATE = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="count")
os.execv(sys.argv[2], sys.argv[2:])
"""


class SocketActivationTests(TestCase):
    """
    The service's command line, run on a socket handed over as systemd
    hands it.
    """

    def test_servesOnTheActivatedSocket(self) -> None:
        """
        primecount started with C{ExecStart}'s options serves on the
        socket it inherits, reads the PROXY header there and journals the
        client it names. (The metrics port and interface are moved to an
        ephemeral port on 127.0.0.1, the journal to a scratch directory.)
        """
        service = (DEPLOY / "primecount.service").read_text()
        scratch = os.path.abspath(self.mktemp())
        os.mkdir(scratch)
        # As /etc/default/primecount would set them on a host whose HAProxy
        # connects from 127.0.0.1.
        variables = dict(
            environment(service),
            PRIMECOUNT_JOURNAL=f"sqlite:{scratch}/primecount.sqlite3",
            PRIMECOUNT_TRUSTED_PROXIES="127.0.0.1",
        )
        args = [word if word != "9100" else "0" for word in expand(execStart(service), variables)]
        listening = socket.socket()
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(64)
        log = open(os.path.join(scratch, "log"), "w+b")  # noqa: SIM115 - closed by cleanup
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [sys.executable, "-c", SOCKET_ACTIVATE, str(listening.fileno()), *TWISTD, *args[1:]],
            cwd=scratch,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=[listening.fileno()],
        )

        def stop() -> None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)

        self.addCleanup(stop)
        # Not HAProxy: refused, whatever client its header names.
        forger = socket.socket()
        self.addCleanup(forger.close)
        forger.settimeout(30)
        forger.bind(("127.0.0.3", 0))
        forger.connect(listening.getsockname())
        forger.sendall(b"PROXY TCP4 6.6.6.6 127.0.0.1 1111 5050\r\nabc2a\n")
        refused = recv_lines(forger, 1, timeout=60)
        log.seek(0)
        self.assertEqual(refused, [b"ERR untrusted proxy\n"], log.read().decode(errors="replace"))
        client = socket.create_connection(listening.getsockname(), timeout=30)
        self.addCleanup(client.close)
        # Version 1: what primecount reads today on haproxy: listeners.
        client.sendall(b"PROXY TCP4 198.51.100.7 127.0.0.1 40123 5050\r\nabc2a\n")
        replies = recv_lines(client, 1, timeout=60)
        log.seek(0)
        self.assertEqual(replies, ["2 sí\n".encode()], log.read().decode(errors="replace"))
        database = os.path.join(scratch, "primecount.sqlite3")
        with closing(sqlite3.connect(database)) as db:
            rows = list(db.execute("SELECT host, port, message FROM requests"))
        self.assertEqual(rows, [("198.51.100.7", 40123, "abc2a")])
        stop()
        self.assertIn(process.returncode, (0, -signal.SIGTERM))
