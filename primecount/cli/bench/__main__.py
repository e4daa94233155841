"""
C{python -m primecount.cli.bench}: the load generator without the C{primecount}
dispatcher, for benchmark scripts.
"""

import argparse
import sys

from primecount.cli import missing_tools
from primecount.cli.bench import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    """
    Parse the command line and run the load generator.
    """
    parser = argparse.ArgumentParser(
        prog="primecount bench", description="Load generator for the count protocol."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    missing = missing_tools("bench")
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
