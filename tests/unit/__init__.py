"""
Unit tests: in process, with StringTransport, Clock or MemoryReactorClock,
and real sockets on 127.0.0.1 only where they take milliseconds. They run
in seconds: C{python -m twisted.trial tests.unit}.
"""
