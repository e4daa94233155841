"""
Baseline: a plain asyncio server, as a user would write it.

One C{asyncio.Protocol} per connection, persistent connections, LF-framed
requests answered in order, no journal (C{--log} appends to an open text
file). No idle timeout and no thread pool: the evaluation is cheap, so it
runs on the event loop.

    python benchmarks/baselines/asyncio_server.py --port 5052
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import IO

from primecount.core.count import evaluate
from primecount.core.outcomes import LINE_TOO_LONG
from primecount.journal.formats import format_original
from primecount.journal.records import PROTOCOL_COUNT, Record

MAX_LINE = 16384


class CountProtocol(asyncio.Protocol):
    """
    The count protocol on one connection.
    """

    log: IO[str] | None = None

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.ip = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """
        Remember the transport and the peer.
        """
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else "?"

    def data_received(self, data: bytes) -> None:
        """
        Answer every complete line.
        """
        assert self.transport is not None
        data = self.buffer + data if self.buffer else data
        if b"\n" not in data:
            self.buffer = data
            if len(data) > MAX_LINE:
                self.transport.write(LINE_TOO_LONG.reply())
                self.transport.close()
            return
        lines = data.split(b"\n")
        self.buffer = lines.pop()
        self.transport.write(b"".join(self.answer(line) for line in lines))

    def answer(self, line: bytes) -> bytes:
        """
        The reply to one line, logged when a log is open.
        """
        evaluation = evaluate(line)
        if self.log is not None:
            self.log.write(
                format_original(
                    Record(
                        time.time(), self.ip, 0, PROTOCOL_COUNT, *evaluation[:3], evaluation.error
                    )
                )
                + "\n"
            )
        return evaluation.reply()

    def eof_received(self) -> bool:
        """
        Half-close: answer a final unterminated request, then close.
        """
        if self.buffer and self.transport is not None:
            self.transport.write(self.answer(self.buffer))
        return False


def arguments(description: str) -> argparse.Namespace:
    """
    The options every asyncio-style baseline takes.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=5050)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--log", help="append one line per request to this file")
    return parser.parse_args()


async def serve(interface: str, port: int, log: str | None) -> None:
    """
    Serve the count protocol until cancelled.
    """
    if log is not None:
        CountProtocol.log = open(log, "a", encoding="utf-8")  # noqa: SIM115
    loop = asyncio.get_running_loop()
    server = await loop.create_server(CountProtocol, interface, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    """
    Parse the command line and serve on the standard asyncio loop.
    """
    args = arguments(__doc__.splitlines()[1])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.interface, args.port, args.log))


if __name__ == "__main__":
    main()
