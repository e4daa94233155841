"""
C{primecount top} as a person uses it: real servers (C{twistd -n
primecount} with C{--metrics-port}) under C{primecount bench} load,
C{primecount top --once} run as a command, and the live view driven in a
real terminal (C{tmux}: started, its screen read with C{capture-pane},
keys pressed).

The arithmetic and the tables are checked in detail by L{tests.unit.test_top}.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from primecount.testing import pgcluster
from primecount.testing.processes import free_port, require_program, stop_process
from primecount.testing.twistd import ServerProcess
from tests.helpers import start_shipped_haproxy

#: Seconds a server may take to show load in its metrics on a loaded machine.
SETTLE = 60.0


def top_argv(*argv: str) -> list[str]:
    """
    The command line of C{primecount top argv…}.
    """
    return [sys.executable, "-m", "primecount", "top", *argv]


def run_top(*argv: str) -> subprocess.CompletedProcess[str]:
    """
    Run C{primecount top argv…} to its end; its status and output.
    """
    return subprocess.run(top_argv(*argv), capture_output=True, text=True, timeout=60)


def directory(case: SynchronousTestCase) -> str:
    """
    A fresh directory outside the checkout, removed after the test.
    """
    path = tempfile.mkdtemp(prefix="primecount-top-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def server(case: SynchronousTestCase, *args: str) -> tuple[ServerProcess, str]:
    """
    A real server with a metrics endpoint, stopped after the test; it and
    its metrics URL.
    """
    metrics = free_port()
    process = ServerProcess(
        "--metrics-port", str(metrics), "--journal", "sqlite:journal.sqlite3", *args,
        cwd=directory(case),
    )  # fmt: skip
    case.addCleanup(process.stop)
    return process, f"http://127.0.0.1:{metrics}/metrics"


def load(case: SynchronousTestCase, port: int, seconds: float = 30) -> subprocess.Popen[bytes]:
    """
    C{primecount bench} against C{port} for C{seconds}, in the background,
    stopped after the test.
    """
    bench = subprocess.Popen(
        [sys.executable, "-m", "primecount", "bench", "--port", str(port), "--clients", "4",
         "--duration", str(seconds), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    case.addCleanup(stop_process, bench)
    return bench


def until(check: Callable[[], object], what: str, timeout: float = SETTLE) -> object:
    """
    Call C{check} until it returns something true (returned), or fail
    after C{timeout} seconds saying C{what} was awaited.
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"waited {timeout} s for {what}; last saw: {last!r}")


def closed_url() -> str:
    """
    A metrics URL on a port of 127.0.0.1 where nothing listens.
    """
    return f"http://127.0.0.1:{free_port()}/metrics"


def busy_snapshot(*urls: str, connections: int = 0) -> dict[str, object]:
    """
    C{primecount top --once --json} of C{urls} once every host that is up
    answers requests (a rate and a latency) and they hold at least
    C{connections} connections in all (the load generator's are all open).
    """

    def busy() -> dict[str, object] | None:
        done = run_top("--once", "--json", "--interval", "1", *urls)
        found = json.loads(done.stdout)
        up = [h for h in found["hosts"] if h["up"]]
        if (
            up
            and all(h["requests_per_second"] and h["latency_p99_seconds"] for h in up)
            and sum(h["open_connections"] for h in up) >= connections
        ):
            return dict(found, status=done.returncode)
        return None

    return until(busy, "a rate and a latency in the snapshot")  # type: ignore[return-value]


class OnceTests(SynchronousTestCase):
    """
    C{primecount top --once} against a server with workers under load, and
    a URL where nothing listens.
    """

    def test_serverUnderLoadAndAHostDown(self) -> None:
        process, url = server(self, "--workers", "2")
        down = closed_url()
        load(self, process.port)
        found = busy_snapshot(url, down, connections=4)
        self.assertEqual(found["status"], 3)
        host, gone = found["hosts"]  # type: ignore[misc]
        self.assertTrue(host["up"])
        self.assertGreater(host["requests_per_second"], 100)
        self.assertGreater(host["latency_p50_seconds"], 0)
        self.assertGreaterEqual(host["latency_p99_seconds"], host["latency_p50_seconds"])
        self.assertEqual(host["open_connections"], 4)  # bench's, no more
        self.assertEqual(host["journal"]["writing"], True)
        # Each worker's journal says once it committed: the kernel may hand
        # every connection to one worker.
        self.assertIn(host["journal"]["journals"], (1, 2))
        self.assertGreater(host["journal_batch_size"], 0)
        self.assertGreater(host["uptime_seconds"], 0)
        # The endpoint gives the whole server's figures, and each worker's.
        workers = host["workers"]
        self.assertEqual(len(workers), 2)
        self.assertEqual(sum(w["open_connections"] for w in workers), 4)
        rates = sum(w["requests_per_second"] for w in workers)
        self.assertLess(
            abs(rates - host["requests_per_second"]), host["requests_per_second"] * 0.05
        )
        self.assertEqual(
            (gone["up"], gone["name"], gone["error"]),
            (False, down.split("/")[2], "connection refused"),
        )

        done = run_top("--once", "--interval", "1", url, down)
        self.assertEqual((done.returncode, done.stderr), (3, ""))
        lines = done.stdout.splitlines()
        name = url.split("/")[2]
        row = next(line for line in lines if line.startswith(name + " "))
        rate, _, p50, p99 = row.split()[1:5]
        self.assertGreater(float(rate.replace(",", "")), 0)
        self.assertRegex(p50, r"^\d+\.\d+m?s$")
        self.assertRegex(p99, r"^\d+\.\d+m?s$")
        self.assertEqual(len([line for line in lines if line.startswith("  pid ")]), 4)
        self.assertIn(f"{down.split('/')[2]} down since ", done.stdout)
        self.assertRegex(done.stdout, r"down since \d\d:\d\d:\d\d: connection refused\n")


class JSONLinesTests(SynchronousTestCase):
    """
    C{primecount top --json}: a line per interval until interrupted.
    """

    def test_aLinePerIntervalUntilCtrlC(self) -> None:
        _, url = server(self)
        top = subprocess.Popen(
            top_argv("--json", "--interval", "0.3", url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(stop_process, top)  # type: ignore[arg-type]
        assert top.stdout is not None
        lines = [json.loads(top.stdout.readline()) for _ in range(3)]
        top.send_signal(signal.SIGINT)
        _, err = top.communicate(timeout=30)
        self.assertEqual((top.returncode, err), (0, ""))
        for line in lines:
            (host,) = line["hosts"]
            self.assertTrue(host["up"])
            # No request yet: a rate of 0, and no latency to speak of.
            self.assertEqual(host["requests_per_second"], 0.0)
            self.assertIsNone(host["latency_p99_seconds"])
        times = [line["time"] for line in lines]
        self.assertEqual(sorted(set(times)), times)


class TwoHostsTests(SynchronousTestCase):
    """
    The set-up of L{tests.system.test_several_hosts}: two hosts behind
    HAProxy sharing one PostgreSQL journal, each with its metrics
    endpoint; C{top} shows both and their sum.
    """

    def setUp(self) -> None:
        self.haproxy = require_program("haproxy", "haproxy")
        self.url = pgcluster.database(pgcluster.shared())

    def test_bothHostsAndTheirSum(self) -> None:
        hosts = [
            server(self, "--journal", self.url, "--listen", "haproxy:tcp:0:interface=127.0.0.1")
            for _ in range(2)
        ]
        _, front, _ = start_shipped_haproxy(
            self, self.haproxy, [process.ports["proxy"] for process, _ in hosts]
        )
        load(self, front)
        urls = [url for _, url in hosts]
        found = busy_snapshot(*urls, connections=4)
        self.assertEqual(found["status"], 0)
        first, second = found["hosts"]  # type: ignore[misc]
        self.assertEqual([first["url"], second["url"]], urls)
        total = found["total"]
        for key in ("requests_per_second", "open_connections"):
            self.assertEqual(total[key], first[key] + second[key])  # type: ignore[index]
        # HAProxy's health checks open connections of their own, briefly.
        self.assertGreaterEqual(total["open_connections"], 4)  # type: ignore[index]
        self.assertEqual(total["journal"]["journals"], 2)  # type: ignore[index]

        done = run_top("--once", "--interval", "1", *urls)
        self.assertEqual(done.returncode, 0, done.stderr)
        names = [u.split("/")[2] for u in urls]
        for label in [*names, "TOTAL"]:
            self.assertEqual(
                len([line for line in done.stdout.splitlines() if line.startswith(label + " ")]),
                2,
                done.stdout,
            )


class TerminalTests(SynchronousTestCase):
    """
    The live view in a real 80×24 terminal: tmux runs it; the test reads
    the screen and presses keys.
    """

    def setUp(self) -> None:
        self.tmux = require_program("tmux", "tmux")
        self.socket = f"primecount-top-{os.getpid()}-{id(self)}"
        self.exit = os.path.join(directory(self), "exit")
        env = {k: v for k, v in os.environ.items() if k != "TMUX"}
        self.env = dict(env, TERM="xterm-256color", LANG="C.UTF-8")

    def tmux_run(self, *argv: str) -> str:
        done = subprocess.run(
            [self.tmux, "-L", self.socket, *argv],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
        )
        return done.stdout

    def screen(self) -> list[str]:
        return self.tmux_run("capture-pane", "-p", "-t", "top").splitlines()

    def test_liveViewHostComesBackKeysAndQuit(self) -> None:
        process, url = server(self)
        load(self, process.port, seconds=120)
        later = free_port()
        late = f"http://127.0.0.1:{later}/metrics"
        command = " ".join(
            [
                *(f"'{a}'" for a in top_argv("--interval", "0.5", url, late)),
                f"; echo $? > {self.exit}",
                "; sleep 60",
            ]
        )
        self.tmux_run("new-session", "-d", "-s", "top", "-x", "80", "-y", "24", command)
        self.addCleanup(self.tmux_run, "kill-server")
        name, late_name = url.split("/")[2], late.split("/")[2]

        def row(host: str, pattern: str) -> Callable[[], list[str] | None]:
            def found() -> list[str] | None:
                screen = self.screen()
                lines = [line for line in screen if re.match(re.escape(host) + pattern, line)]
                return screen if lines else None

            return found

        # The busy host with a rate; the other down, with why.
        number = r"\s+[0-9,.]*[1-9][0-9,.]*\s"
        screen = until(row(name, number), "the host's rate on the screen")
        until(row(late_name, r" down since \d\d:\d\d:\d\d: connection refused"), "the host down")
        self.assertTrue(screen[0].startswith("primecount top "), screen)  # type: ignore[index]
        self.assertEqual(screen[1], "", "the title fits one line")  # type: ignore[index]
        # It comes back and rejoins.
        server_late = ServerProcess(
            "--metrics-port", str(later), "--journal", "none", cwd=directory(self)
        )
        self.addCleanup(server_late.stop)
        until(row("primecount top ", r".* 2 hosts, 2 up "), "the second host up")
        until(row(late_name, r"\s+0\s"), "the second host's rate (none)")
        # A key sorts.
        self.tmux_run("send-keys", "-t", "top", "e")
        until(row("primecount top ", r".* by errors"), "sorted by errors")
        self.tmux_run("send-keys", "-t", "top", "q")
        until(lambda: os.path.exists(self.exit) and os.path.getsize(self.exit), "the exit")
        with open(self.exit) as f:
            self.assertEqual(f.read().strip(), "0")
        # The screen is given back: no table is left on it.
        self.assertFalse(any(line.startswith("HOST ") for line in self.screen()), self.screen())
