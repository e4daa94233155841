"""
primecount: a Twisted service that answers prime questions over TCP and
records every request it answers.
"""

__version__ = "0.1.0"
