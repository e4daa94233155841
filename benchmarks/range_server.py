# -*- test-case-name: tests.test_rangeserver -*-
"""
A minimal range protocol server for the benchmark: a L{RangeFactory} on a
TCP port, with a real thread pool and a journal that keeps nothing.

The benchmark prefers C{twistd -n primecount --range-port PORT}; this script
is its fallback when the plugin is not usable. It prints C{listening PORT}
once the port is bound (use port 0 for any free port).

    python benchmarks/range_server.py [PORT] [THREADS]
"""

from __future__ import annotations

import sys

from twisted.internet.defer import Deferred, succeed
from twisted.python.threadpool import ThreadPool

from primecount.journal.records import Record
from primecount.server.rangeprotocol import RangeFactory


class NoJournal:
    """
    A journal that accepts every record and keeps none.
    """

    def append(self, records: list[Record]) -> Deferred[None]:
        """
        Accept and forget C{records}.
        """
        return succeed(None)


def main(argv: list[str]) -> None:
    """
    Serve the range protocol until killed.
    """
    from twisted.internet import reactor

    port = int(argv[1]) if len(argv) > 1 else 0
    threads = int(argv[2]) if len(argv) > 2 else 10
    pool = ThreadPool(minthreads=0, maxthreads=threads, name="range")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)  # type: ignore[attr-defined]
    factory = RangeFactory(reactor, pool, NoJournal())
    listening = reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"listening {listening.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv)
