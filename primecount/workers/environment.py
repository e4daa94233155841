"""
How a supervisor tells a worker process what to serve: the command line
that starts it and the environment that names its sockets, its section of
the shared connection counts and its supervisor. L{WorkerEnvironment}
encodes it (in the supervisor) and decodes it (in the worker), so the two
ends cannot drift apart.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

#: Environment of a worker: "label=fd/family,…", the sockets to adopt.
WORKER_ENV = "PRIMECOUNT_WORKER_SOCKETS"
#: Environment of a worker: "path:sections", the file holding the shared
#: connection counts and how many sections (workers) it has.
COUNTS_ENV = "PRIMECOUNT_SHARED_COUNTS"
#: Environment of a worker: its index among the workers (its section).
INDEX_ENV = "PRIMECOUNT_WORKER_INDEX"
#: Environment of a worker: the supervisor's pid.
SUPERVISOR_ENV = "PRIMECOUNT_SUPERVISOR_PID"

#: What systemd tells the process it starts about the sockets it passes
#: (C{sd_listen_fds}): the supervisor's alone, never a worker's.
SYSTEMD_ENV = frozenset({"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"})

#: Descriptors handed to workers start here (0-2 are the standard streams).
FIRST_FD = 3


def twistd_argv() -> list[str]:
    """
    The command that runs twistd with this interpreter (so that the
    installed package in use is the one served), named C{twistd} in its
    own usage messages.
    """
    return [
        sys.executable,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
    ]


def primecount_argv(*args: str) -> list[str]:
    """
    The command that runs C{twistd -n primecount ARGS} in the foreground,
    without a pid file.
    """
    return [*twistd_argv(), "-n", "--pidfile=", "primecount", *args]


def encode_sockets(sockets: Mapping[str, tuple[int, int]]) -> str:
    """
    The L{WORKER_ENV} value for C{label -> (fd, address family)}; a label
    may end in digits that make it unique (C{count0}, C{count1}).
    """
    return ",".join(f"{label}={fd}/{family}" for label, (fd, family) in sockets.items())


def decode_sockets(value: str) -> list[tuple[str, int, int]]:
    """
    (label, fd, address family) for each socket in a L{WORKER_ENV} value.
    Several sockets may share a label (several C{--listen}).
    """
    found = []
    for item in filter(None, value.split(",")):
        label, _, rest = item.partition("=")
        fd, _, family = rest.partition("/")
        found.append((_plain(label), int(fd), int(family)))
    return found


def _plain(label: str) -> str:
    """
    A socket's label without the number that made it unique.
    """
    return label.rstrip("0123456789")


@dataclass(frozen=True)
class WorkerEnvironment:
    """
    What a worker process learns from its environment.

    @ivar sockets: label -> (fd, address family) of the inherited listening
        sockets (labels made unique by a trailing number).
    @ivar counts: the file of the shared connection counts.
    @ivar workers: how many workers (sections of that file).
    @ivar index: this worker's index (its section).
    @ivar supervisor: the supervisor's pid.
    """

    sockets: Mapping[str, tuple[int, int]]
    counts: str
    workers: int
    index: int
    supervisor: int

    def encode(self) -> dict[str, str]:
        """
        The environment variables that say all this to the worker.
        """
        return {
            WORKER_ENV: encode_sockets(self.sockets),
            COUNTS_ENV: f"{self.counts}:{self.workers}",
            INDEX_ENV: str(self.index),
            SUPERVISOR_ENV: str(self.supervisor),
        }

    def adopted(self) -> list[tuple[str, int, int]]:
        """
        (label, fd, address family) of each socket to adopt, its label
        without the number that made it unique.
        """
        return [(_plain(label), fd, family) for label, (fd, family) in self.sockets.items()]

    @classmethod
    def decode(cls, environ: Mapping[str, str]) -> WorkerEnvironment | None:
        """
        The environment of a worker, or C{None} when C{environ} is not a
        worker's (no L{WORKER_ENV}).
        """
        if not environ.get(WORKER_ENV):
            return None
        counts, _, workers = environ[COUNTS_ENV].rpartition(":")
        sockets = {
            f"{label}{n}": (fd, family)
            for n, (label, fd, family) in enumerate(decode_sockets(environ[WORKER_ENV]))
        }
        return cls(
            sockets=sockets,
            counts=counts,
            workers=int(workers),
            index=int(environ.get(INDEX_ENV, "0")),
            supervisor=int(environ.get(SUPERVISOR_ENV, "0")),
        )
