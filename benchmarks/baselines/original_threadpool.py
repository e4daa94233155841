"""
Baseline: the original thread-pool server, as docs/user/original.md describes it.

The main thread accepts connections and hands each one to a pool of 10
threads. A worker reads once (C{recv(1024)}, 5 s timeout), treats those
bytes as the one message, appends a line C{time | ip | message | k | sí/no}
to a text log under a lock (opening the file for each line, as the
original did), sends the reply and closes the connection.

    python benchmarks/baselines/original_threadpool.py --port 5051 --log original.log

Replies come from L{primecount.core.count}, so every server in the comparison
computes the same answers; only the serving design differs.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from primecount.core.count import evaluate
from primecount.journal.formats import format_original
from primecount.journal.records import PROTOCOL_COUNT, Record

POOL_SIZE = 10
RECEIVE_TIMEOUT = 5.0


class OriginalServer:
    """
    The original design: accept loop, thread pool, one message per
    connection, append-under-lock log.
    """

    def __init__(self, log: str | None) -> None:
        self.log = log
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=POOL_SIZE)

    def handle(self, conn: socket.socket, ip: str) -> None:
        """
        Answer the one message of one connection, then close it.
        """
        with conn:
            conn.settimeout(RECEIVE_TIMEOUT)
            try:
                data = conn.recv(1024)
            except OSError:
                return
            if not data:
                return
            evaluation = evaluate(data)
            if self.log is not None:
                entry = (
                    format_original(
                        Record(
                            time.time(), ip, 0, PROTOCOL_COUNT, *evaluation[:3], evaluation.error
                        )
                    )
                    + "\n"
                )
                with self.lock, open(self.log, "a", encoding="utf-8") as f:
                    f.write(entry)
            try:
                conn.sendall(evaluation.reply())
            except OSError:
                return

    def serve(self, interface: str, port: int) -> None:
        """
        Accept connections forever.
        """
        with socket.create_server((interface, port), backlog=128) as server:
            while True:
                conn, address = server.accept()
                self.pool.submit(self.handle, conn, address[0])


def main() -> None:
    """
    Parse the command line and serve.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--port", type=int, default=5050)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--log", help="append one line per request to this file")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        OriginalServer(args.log).serve(args.interface, args.port)


if __name__ == "__main__":
    main()
