"""
System tests: real subprocesses (twistd, the primecount command, HAProxy,
PostgreSQL, JMeter, the C benchmark programs) and real-time runs on
127.0.0.1.
"""
