"""
Helpers that start real programs on this machine for primecount's tests and
benchmarks, in the spirit of C{twisted.internet.testing}: a real C{twistd -n
primecount} on loopback (L{primecount.testing.twistd}), a throwaway
PostgreSQL cluster (L{primecount.testing.pgcluster}), a throwaway Patroni
cluster (L{primecount.testing.patronicluster}), clients that keep asking
(L{primecount.testing.clients}) and the checks and ports they need
(L{primecount.testing.processes}).

The server never imports this package; only C{tests/} and C{benchmarks/} do
(C{tests/unit/test_layout.py} holds it to that). Everything here listens on
127.0.0.1 only and removes what it made.
"""
