# -*- test-case-name: tests.system.test_metricsport_process -*-
"""
The metrics port flooded with idle connections under a low open-files
limit, against a real server: the count service does not notice, and
C{/metrics} answers again once the idle ones are dropped. The units are in
L{tests.unit.test_metricsport}; C{python -m benchmarks.limit_pressure --pattern
metrics-flood} prints the same figures.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from benchmarks import limit_pressure as pressure
from primecount.server.metricsport import METRICS_TIMEOUT


class FloodTests(SynchronousTestCase):
    """
    300 idle connections to the metrics port of a server with 256
    descriptors (before: every count request refused, C{/metrics} never
    answered, a log line per refused socket).
    """

    def assertWithstood(self, result: object, requests: int) -> None:
        log = "\n".join(result.lines)  # type: ignore[attr-defined]
        self.assertEqual(dict(result.outcomes), {"answered": requests}, log)  # type: ignore[attr-defined]
        took = result.figures.get("metrics_after_s")  # type: ignore[attr-defined]
        self.assertIsNotNone(took, log)
        # Once the idle ones are dropped (METRICS_TIMEOUT, plus a sweep).
        self.assertLess(took, METRICS_TIMEOUT + 10, log)
        self.assertLess(result.during + result.after, 10, log)  # type: ignore[attr-defined]
        self.assertNotIn("Traceback", log)
        self.assertNotIn("EMFILE", log)

    def test_countServiceAndMetricsWithstandAFlood(self) -> None:
        result = pressure.flood_metrics(connections=300, requests=30, openFiles=256, settle=1)
        self.assertWithstood(result, 30)

    def test_supervisorsMetricsPortWithstandsAFlood(self) -> None:
        """
        With C{--workers}, the supervisor serves C{/metrics} under the same
        limits.
        """
        result = pressure.flood_metrics(
            connections=100, requests=10, openFiles=256, settle=1, options=("--workers", "2")
        )
        self.assertWithstood(result, 10)
