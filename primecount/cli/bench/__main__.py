"""
C{python -m primecount.cli.bench}: the load generator without the C{primecount}
dispatcher, for benchmark scripts.
"""

import argparse
import sys

from primecount.cli.bench import add_arguments, run


def main() -> int:
    """
    Parse the command line and run the load generator.
    """
    parser = argparse.ArgumentParser(
        prog="primecount bench", description="Load generator for the count protocol."
    )
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
