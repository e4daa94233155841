# -*- test-case-name: tests.system.test_journal_interface_process -*-
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
from typing import Any

from twisted.python.threadpool import ThreadPool

from primecount.journal import NullJournal
from primecount.server.rangeprotocol import RangeFactory


def main(argv: list[str]) -> None:
    """
    Serve the range protocol until killed.
    """
    from twisted.internet import reactor as installed

    # The reactor's methods come from several interfaces; none names them all.
    reactor: Any = installed

    port = int(argv[1]) if len(argv) > 1 else 0
    threads = int(argv[2]) if len(argv) > 2 else 10
    pool = ThreadPool(minthreads=0, maxthreads=threads, name="range")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    factory = RangeFactory(reactor, pool, NullJournal())
    listening = reactor.listenTCP(port, factory, interface="127.0.0.1")
    print(f"listening {listening.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
