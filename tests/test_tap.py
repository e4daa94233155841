# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin: discovery, option parsing, and the service it builds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess

from twisted.application.service import IService
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from primecount import tap
from primecount.journal import JournalURL, NullJournal
from primecount.server import placement

from .helpers import TWISTD, ServerProcess, recv_lines


def twistd(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TWISTD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


class PluginTests(SynchronousTestCase):
    """
    twistd finds the plugin.
    """

    def test_twistdHelpListsPrimecount(self) -> None:
        result = twistd("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("primecount", result.stdout)

    def test_primecountHelpListsOptions(self) -> None:
        result = twistd("primecount", "--help")
        for option in (
            "--port",
            "--interface",
            "--listen",
            "--threads",
            "--timeout",
            "--max-line",
            "--close-after-reply",
            "--framing",
            "--max-connections",
            "--journal",
        ):
            self.assertIn(option, result.stdout)

    def test_badValueIsOneLineAndNonZeroExit(self) -> None:
        for args in (
            ["--threads", "0"],
            ["--port", "70000"],
            ["--timeout", "soon"],
            ["--journal", "mysql://x"],
            ["--listen", "bogus:1"],
            ["--nope"],
        ):
            result = twistd("-n", "--pidfile=", "primecount", *args, cwd=self.mktemp_dir())
            self.assertEqual(result.returncode, 1, args)
            lines = (result.stdout + result.stderr).strip().splitlines()
            self.assertEqual(len(lines), 1, (args, lines))
            self.assertTrue(lines[0].startswith("twistd primecount: error: "), lines)
            self.assertNotIn("Traceback", result.stderr)

    def test_portInUseIsOneLineAndNonZeroExit(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = str(taken.getsockname()[1])
            result = twistd(
                "-n", "--pidfile=", "primecount", "--port", port, "--interface", "127.0.0.1",
                "--journal", "none", cwd=self.mktemp_dir(),
            )  # fmt: skip
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1", result.stdout)
        self.assertIn("Address already in use", result.stdout)
        self.assertNotIn("Traceback", result.stdout + result.stderr)

    def test_metricsPortInUseIsOneLineAndNonZeroExit(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = str(taken.getsockname()[1])
            for args in (
                ["--port", "0", "--metrics-port", port],
                ["--port", "0", "--metrics-port", port, "--workers", "2"],
            ):
                result = twistd(
                    "-n", "--pidfile=", "primecount", "--interface", "127.0.0.1",
                    "--journal", "none", *args, cwd=self.mktemp_dir(),
                )  # fmt: skip
                output = result.stdout + result.stderr
                self.assertEqual(result.returncode, 1, (args, output))
                self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1", output)
                self.assertIn("Address already in use", output)
                self.assertNotIn("Traceback", output)
                self.assertLess(len(output.splitlines()), 8, output)

    def test_metricsPortEqualToPortIsOneLineAndNonZeroExit(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = str(probe.getsockname()[1])
        result = twistd(
            "-n", "--pidfile=", "primecount", "--interface", "127.0.0.1",
            "--journal", "none", "--port", port, "--metrics-port", port, cwd=self.mktemp_dir(),
        )  # fmt: skip
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1", output)
        self.assertNotIn("Traceback", output)

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path


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
                    "shutdown-timeout",
                    "range-port",
                    "cpu-affinity",
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
                "shutdown-timeout": 10.0,
                "range-port": None,
                "cpu-affinity": placement.Placement("auto"),
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

    def test_makeServiceComposesListeners(self) -> None:
        service = tap.makeService(self.parse("--listen", "tcp:0", "--listen", "tcp:0"))
        self.assertTrue(IService.providedBy(service))
        self.assertEqual([lsn.label for lsn in service.listeners], ["count", "count"])
        self.assertIsInstance(service.journal, NullJournal)


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
        self.assertEqual(tap.raise_open_files_limit(wanted), wanted)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], wanted)


class CPUAffinityTests(SynchronousTestCase):
    """
    C{--cpu-affinity} pins every thread of the serving process.
    """

    def test_everyThreadOnTheChosenCPU(self) -> None:
        from .helpers import ServerProcess, recv_lines

        usable = sorted(os.sched_getaffinity(0))
        if len(usable) < 2:
            raise self.skipTest("needs two usable CPUs")
        cpu = usable[-1]
        cwd = self.mktemp()
        os.makedirs(cwd)
        server = ServerProcess("--cpu-affinity", str(cpu), cwd=cwd)
        try:
            # A request makes the pool start its thread.
            with server.connect() as sock:
                sock.sendall(b"abc2a\n")
                self.assertEqual(recv_lines(sock, 1), ["2 sí\n".encode()])
            pid = server.process.pid
            tids = os.listdir(f"/proc/{pid}/task")
            self.assertGreaterEqual(len(tids), 3)  # reactor, pool, journal
            for tid in tids:
                self.assertEqual(os.sched_getaffinity(int(tid)), {cpu}, tid)
        finally:
            server.stop()
        self.assertIn(f"runs on CPU {cpu}".encode(), server.log)


def self_signed(path: str) -> None:
    """
    Write a throwaway key and self-signed certificate for 127.0.0.1 and
    localhost, both in the PEM file C{path}.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with open(path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        f.write(certificate.public_bytes(serialization.Encoding.PEM))


class TLSTests(SynchronousTestCase):
    """
    C{--listen ssl:…} works from the documented install, and says what is
    missing in one line when TLS support is not installed.
    """

    def test_tlsEndToEnd(self) -> None:
        import ssl

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        pem = os.path.join(directory, "server.pem")
        self_signed(pem)
        server = ServerProcess(
            "--journal", "none", "--listen",
            f"ssl:0:interface=127.0.0.1:privateKey={pem}", cwd=directory,
        )  # fmt: skip
        self.addCleanup(server.stop)
        context = ssl.create_default_context(cafile=pem)
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            sock.sendall(b"abc2a\nabc\n")
            self.assertEqual(recv_lines(sock, 2), ["2 sí\n".encode(), b"1 no\n"])
        self.assertIn(server.stop(), (0, -signal.SIGTERM))
        self.assertNotIn(b"Traceback", server.log)

    def test_missingTLSSupportIsOneLine(self) -> None:
        directory = os.path.abspath(self.mktemp())
        fake = os.path.join(directory, "OpenSSL")
        os.makedirs(fake)
        with open(os.path.join(fake, "__init__.py"), "w") as f:
            f.write("raise ImportError('No module named OpenSSL')\n")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [directory, env.get("PYTHONPATH")]))
        result = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "primecount", "--journal", "none",
             "--listen", "ssl:0:privateKey=server.pem"],
            capture_output=True, text=True, timeout=60, cwd=directory, env=env,
        )  # fmt: skip
        output = (result.stdout + result.stderr).strip().splitlines()
        self.assertEqual(result.returncode, 1, output)
        self.assertEqual(len(output), 1, output)
        self.assertIn("needs TLS support", output[0])
        self.assertIn("twisted[tls]", output[0])


class StopLogTests(SynchronousTestCase):
    """
    The stop's log lines count things in good English.
    """

    def test_plural(self) -> None:
        self.assertEqual(tap._plural(1, "open connection"), "1 open connection")
        self.assertEqual(tap._plural(0, "record"), "0 records")
        self.assertEqual(tap._plural(2, "record"), "2 records")
