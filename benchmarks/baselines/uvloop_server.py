"""
Baseline: the plain asyncio server of C{asyncio_server.py} on uvloop.

    python benchmarks/baselines/uvloop_server.py --port 5053
"""

from __future__ import annotations

import asyncio

import uvloop
from asyncio_server import arguments, serve


def main() -> None:
    """
    Parse the command line and serve on uvloop.
    """
    args = arguments(__doc__.splitlines()[1])
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args.interface, args.port, args.log))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
