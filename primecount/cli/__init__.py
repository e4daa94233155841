# -*- test-case-name: tests.system.test_cli -*-
"""
The C{primecount} command: C{ask}, C{primes}, C{bench}, C{journal} and C{top}.

Every subcommand lives in its own module exposing C{add_arguments(parser)}
and C{run(args) -> int}; this module only dispatches. Any failure the user
can cause (server down, bad numbers, a missing journal, a missing optional
package) ends in one line on stderr and a non-zero exit status, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import NoReturn

from primecount import __version__

#: subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "ask": ("primecount.cli.ask", "send messages to the count protocol and print the replies"),
    "primes": ("primecount.cli.primes", "the original multi-client for the range protocol"),
    "bench": ("primecount.cli.bench", "load generator for both protocols"),
    "journal": ("primecount.cli.journal", "read, follow, sum up or prune the request journal"),
    "top": ("primecount.cli.top", "live view of running servers, from their metrics endpoints"),
}

#: The optional packages of the C{tools} extra (C{pip install
#: 'primecount[tools]'}), by the name they are imported as: the server needs
#: neither.
TOOLS_EXTRA = {"rich": "rich", "hdrh": "hdrhistogram"}

#: subcommand -> the packages of L{TOOLS_EXTRA} it imports.
NEEDS_TOOLS = {"bench": ("hdrh", "rich"), "top": ("rich",)}


def missing_tools(command: str) -> str | None:
    """
    The one line that says which packages of the C{tools} extra
    C{primecount COMMAND} needs and does not find, or C{None} when it finds
    them all.
    """
    absent = [
        TOOLS_EXTRA[name]
        for name in NEEDS_TOOLS.get(command, ())
        if importlib.util.find_spec(name) is None
    ]
    if not absent:
        return None
    verb = "is" if len(absent) == 1 else "are"
    return (
        f"primecount {command}: needs {' and '.join(absent)}, which {verb} not installed: "
        "pip install 'primecount[tools]'"
    )


class ArgumentParser(argparse.ArgumentParser):
    """
    An argument parser whose errors are one line: C{primecount ask: error: …}.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_server_arguments(
    parser: argparse.ArgumentParser, port: int, what: str, timeout: float, waits: str
) -> None:
    """
    Declare C{--host}, C{--port} and C{--timeout}, the server a client
    command talks to.

    @param port: the default port; C{what} names it (C{count port}).
    @param timeout: the default seconds; C{waits} says what for.
    """
    parser.add_argument("--host", default="127.0.0.1", help="server address (default %(default)s)")
    parser.add_argument("--port", type=int, default=port, help=f"{what} (default %(default)s)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help=f"seconds to wait {waits} (default %(default)s)",
    )


def build_parser(argv: Sequence[str] = ()) -> ArgumentParser:
    """
    The parser of the whole command.

    Only the subcommand named in C{argv} has its module imported (the load
    generator pulls in numpy; C{ask} should start instantly).
    """
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = ArgumentParser(
        prog="primecount",
        description="Client tools for the primecount server.",
    )
    parser.add_argument("--version", action="version", version=f"primecount {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True
    for name, (module, summary) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=summary, description=summary)
        command.set_defaults(_module=module)
        if name == chosen:
            importlib.import_module(module).add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the C{primecount} command; returns the exit status.
    """
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(argv).parse_args(argv)
    missing = missing_tools(args.command)
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `primecount journal | head`: the reader went away; not an error.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
