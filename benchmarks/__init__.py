"""
primecount's benchmarks: each module is a script run from the checkout as
C{python -m benchmarks.NAME} (C{--help} for its options), and
L{benchmarks.harness} is what they share. Figures and how they were taken
are in C{benchmarks/RESULTS.md} and the documentation.
"""
