"""
twistd dropin for primecount: C{twistd primecount --port 5050}.

Nothing is imported here beyond L{ServiceMaker}, so the subcommand cannot
vanish because of an import error in the package.
"""

from twisted.application.service import ServiceMaker

primecount = ServiceMaker(
    "primecount",
    "primecount.tap",
    "Answer prime questions over TCP and journal every request.",
    "primecount",
)
