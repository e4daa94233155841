# -*- test-case-name: tests.system.test_cli -*-
"""
C{primecount ask MESSAGE…}: send messages to the count protocol, print the
replies.

All messages go on one connection, pipelined; the replies are printed in
order, one line each, exactly as the server sent them.
"""

from __future__ import annotations

import argparse
import socket
import sys

from primecount.cli import add_server_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Declare C{ask}'s arguments.
    """
    parser.add_argument("messages", nargs="+", metavar="MESSAGE", help="messages to ask about")
    add_server_arguments(parser, 5050, "count port", 10.0, "for the replies")


def ask(host: str, port: int, messages: list[str], timeout: float = 10.0) -> list[bytes]:
    """
    Send C{messages} on one connection and return the reply lines, LF
    included, in order.

    @raise OSError: when the server cannot be reached or stops answering.
    @raise ValueError: when a message contains a newline (it would be two).
    """
    for message in messages:
        if "\n" in message:
            raise ValueError(f"a message cannot contain a newline: {message!r}")
    request = b"".join(m.encode("utf-8", "surrogateescape") + b"\n" for m in messages)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while received.count(b"\n") < len(messages):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    replies = [line + b"\n" for line in bytes(received).split(b"\n")[:-1]]
    if len(replies) < len(messages):
        raise ConnectionError(
            f"server closed the connection after {len(replies)} of {len(messages)} replies"
        )
    return replies


def run(args: argparse.Namespace) -> int:
    """
    Print the reply to each message; exit 1 when any reply is an error.
    """
    try:
        replies = ask(args.host, args.port, args.messages, args.timeout)
    except (OSError, ValueError) as e:
        print(f"primecount ask: {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    out = sys.stdout.buffer
    for reply in replies:
        out.write(reply)
    out.flush()
    return 1 if any(r.startswith(b"ERR ") for r in replies) else 0
