"""
C{python -m primecount}: the same as the C{primecount} command.
"""

import sys

from primecount.cli import main

sys.exit(main())
