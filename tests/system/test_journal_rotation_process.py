# -*- test-case-name: tests.system.test_journal_rotation_process -*-
"""
Log rotation under load while a reader exports the journal: a real twistd
serving clients, a real C{primecount journal --format csv} running, then
C{mv PATH PATH.old}; every acknowledged request is in exactly one of the
two files afterwards.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from primecount.core.count import expected_reply
from primecount.journal.records import PROTOCOL_COUNT, Record
from primecount.journal.sqlite import schema
from primecount.testing.twistd import ServerProcess
from tests.helpers import recv_lines

#: Records in the journal before the server starts: enough that the export
#: is still running when the file is renamed.
BACKLOG = 300_000


def fill(path: str, n: int) -> None:
    """
    A journal at C{path} holding C{n} old records.
    """
    conn = schema.connect(path)
    conn.execute("BEGIN")
    for start in range(0, n, schema.MAX_ROWS):
        records = [
            Record(1_600_000_000.0 + i, "192.0.2.1", 1, PROTOCOL_COUNT, f"old{i}", 1, False)
            for i in range(start, min(n, start + schema.MAX_ROWS))
        ]
        for sql, params in schema.inserts(records):
            conn.execute(sql, params)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def messages(path: str) -> list[str]:
    """
    The messages of the load's records in the file at C{path} (none when
    there is no file, or a file without the journal's table: a journal
    whose very first commits were lost with a WAL).
    """
    if not os.path.exists(path):
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'requests'").fetchall():
            return []
        return [m for (m,) in conn.execute("SELECT message FROM requests WHERE message LIKE 'c%'")]
    finally:
        conn.close()


class Client(threading.Thread):
    """
    One client asking C{c<n>-<i>} until stopped, a few requests in flight.

    @ivar acknowledged: the messages answered with their count (not ERR).
    """

    def __init__(self, port: int, n: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.n, self.stopping = port, n, stop
        self.acknowledged: list[str] = []
        self.errors = 0

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            i = 0
            while not self.stopping.is_set():
                sent = [f"c{self.n}-{i + k}" for k in range(4)]
                i += 4
                sock.sendall(b"".join(m.encode() + b"\n" for m in sent))
                for message, reply in zip(sent, recv_lines(sock, 4, timeout=30), strict=True):
                    if reply == expected_reply(message):
                        self.acknowledged.append(message)
                    else:
                        self.errors += 1


class Drain(threading.Thread):
    """
    Reads a pipe to its end (so that the writer never blocks on it), and
    says when the first bytes came.
    """

    def __init__(self, pipe: object) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.started = threading.Event()

    def run(self) -> None:
        read = self.pipe.read  # type: ignore[attr-defined]
        while read(65536):
            self.started.set()


class RotationWithReaderTests(SynchronousTestCase):
    """
    C{mv journal journal.old} while a CSV export reads it, under load.
    """

    def test_everyAcknowledgedRecordInExactlyOneFile(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "j.sqlite3")
        fill(path, BACKLOG)
        server = ServerProcess("--journal", "sqlite:j.sqlite3", cwd=directory)
        self.addCleanup(server.stop)
        stop = threading.Event()
        clients = [Client(server.port, n, stop) for n in range(4)]
        for client in clients:
            client.start()
        time.sleep(1.0)
        export = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "primecount",
                "journal",
                "--journal",
                f"sqlite:{path}",
                "--format",
                "csv",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(lambda: export.poll() is None and export.kill())
        exported = Drain(export.stdout)
        exported.start()
        # Rename once the export has the file open and is reading it (its
        # start takes a while on a loaded machine).
        self.assertTrue(exported.started.wait(60), "the export printed nothing in 60 s")
        os.rename(path, path + ".old")
        reading = export.poll() is None
        time.sleep(2.0)
        stop.set()
        for client in clients:
            client.join(30)
        export.wait(120)
        exported.join(30)
        server.stop()
        self.assertTrue(reading, "the export ended before the rename: make BACKLOG larger")
        acknowledged = [m for client in clients for m in client.acknowledged]
        old, new = messages(path + ".old"), messages(path)
        counts: dict[str, int] = {}
        for m in old + new:
            counts[m] = counts.get(m, 0) + 1
        missing = [m for m in acknowledged if m not in counts]
        twice = [m for m, n in counts.items() if n > 1]
        summary = (
            f"acknowledged {len(acknowledged)}, in the old file {len(old)}, in the new "
            f"{len(new)}, acknowledged and missing {len(missing)} (first: {missing[:3]}), "
            f"in both {len(twice)} (first: {twice[:3]}), "
            f"ERR replies {sum(c.errors for c in clients)}"
        )
        print(summary)
        why = f"{summary}\nserver log:\n{server.log.decode(errors='replace')[-3000:]}"
        self.assertEqual((len(missing), len(twice)), (0, 0), why)
        self.assertGreater(len(new), 0, f"nothing was written to the new file; {why}")
        self.assertEqual(export.returncode, 0, export.stderr.read() if export.stderr else "")
