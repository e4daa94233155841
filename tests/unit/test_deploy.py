"""
Tests for the files in C{deploy/} that need no tool: every C{primecount_*}
name the alerts and the dashboard use must be a metric the server exports.
The tools' own checks are in L{tests.system.test_deploy_process}.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from twisted.trial.unittest import TestCase

from primecount.core.outcomes import LABELS
from primecount.metrics.prometheus import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def metricSampleNames() -> set[str]:
    """
    Every sample name the server can export under C{primecount_*}: counters
    as C{_total}, histograms as C{_bucket}, C{_sum}, C{_count}, gauges bare.
    """
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {
        family.name + suffix
        for family in Metrics().registry.collect()
        if family.name.startswith("primecount_")
        for suffix in suffixes[family.type]
    }


def dashboardQueries(dashboard: dict[str, object]) -> list[str]:
    """
    The C{expr} of every target of every panel.
    """
    panels = dashboard["panels"]
    assert isinstance(panels, list)
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


class MetricNamesTests(TestCase):
    """
    The alerts and the dashboard use only metrics and label values that
    the server exports (no tool needed).
    """

    def usedNames(self, queries: str) -> set[str]:
        """
        The C{primecount_*} metric names in PromQL C{queries} (quoted label
        values such as C{proxy="primecount_hosts"} left out).
        """
        return set(re.findall(r"\bprimecount_[a-z_]+", re.sub(r'"[^"]*"', '""', queries)))

    def test_alertsUseExportedMetrics(self) -> None:
        """
        Every C{primecount_*} name in an alert expression is a sample the
        server exports, and every C{outcome} value one it counts.
        """
        text = (DEPLOY / "alerts.yml").read_text()
        exprs = "\n".join(re.findall(r"expr: (.*(?:\n {10,}.*)*)", text))
        used = self.usedNames(exprs)
        self.assertTrue(
            {
                "primecount_requests_total",
                "primecount_journal_failed_records_total",
                "primecount_worker_restarts_total",
                "primecount_request_duration_seconds_bucket",
            }
            <= used,
            used,
        )
        self.assertEqual(used - metricSampleNames(), set())
        outcomes = set(re.findall(r'outcome="(\w+)"', exprs))
        self.assertEqual(outcomes, {"journal_unavailable", "server_busy"})
        self.assertEqual(outcomes - LABELS, set())

    def test_dashboardUsesExportedMetrics(self) -> None:
        """
        The dashboard is valid JSON, shows every C{primecount_*} family, and
        names no sample the server does not export.
        """
        dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
        used = self.usedNames("\n".join(dashboardQueries(dashboard)))
        exported = metricSampleNames()
        self.assertEqual(used - exported, set())
        families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
        allFamilies = {family.name for family in Metrics().registry.collect()}
        self.assertEqual({f for f in allFamilies if f.startswith("primecount_")} - families, set())
