# -*- test-case-name: tests.system.test_tap_process -*-
"""
The twistd plugin run by twistd: discovery, option errors, CPU affinity,
TLS. Options and the service built are in L{tests.unit.test_tap}.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from primecount.testing.twistd import TWISTD, ServerProcess
from tests.helpers import recv_lines
from tests.unit.test_tap import EVERY_OPTION


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
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(len(EVERY_OPTION), 22)
        for option in EVERY_OPTION:
            self.assertIn(f"--{option}", result.stdout)

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
        self.assertIn(
            f"--port {port}: cannot listen on 127.0.0.1:{port}: the address is already in use",
            result.stdout,
        )
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
                self.assertIn(
                    f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}: "
                    "the address is already in use",
                    output,
                )
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
        self.assertEqual(
            output,
            f"twistd primecount: error: port {port} is given twice: --port {port} and "
            f"--metrics-port {port} (each listener needs a port of its own)\n",
        )

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path


class CPUAffinityTests(SynchronousTestCase):
    """
    C{--cpu-affinity} pins every thread of the serving process.
    """

    def test_everyThreadOnTheChosenCPU(self) -> None:
        from primecount.testing.twistd import ServerProcess
        from tests.helpers import recv_lines

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
