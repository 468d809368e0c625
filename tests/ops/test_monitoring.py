"""The alert rules and the Grafana dashboard shipped in ``deploy/``: valid for Prometheus
(``promtool``), and naming only metrics shim exposes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shim.ops import Metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "shim.json"
# Metric-like names in PromQL: what a selector names (label names and values inside {} are dropped).
_NAME = re.compile(r"\b((?:shim|process|python)_[a-zA-Z0-9_]+)\b")


def exposed_names() -> set[str]:
    """Every series name a shim's /metrics can show, from its registry's metric families."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum", "created")}
        for sample in family.samples:
            names.add(sample.name)
    return names


def used_names(expr: str) -> set[str]:
    return set(_NAME.findall(re.sub(r"\{[^}]*\}", "", expr)))


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not found (CI must check the alert rules: .ci/prometheus.sh)", pytrace=False)
        pytest.skip("promtool not found (Debian package prometheus)")
    return found


def run(*args: str, cwd: Path = ROOT) -> None:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dash["panels"] for t in panel.get("targets", ())]


def test_exposed_names_include_process_metrics() -> None:
    names = exposed_names()
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "shim_callback_attempts_total",
            "shim_http_request_duration_seconds_bucket"} <= names


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    tool = promtool()
    run(tool, "check", "rules", str(ALERTS))
    # Behaviour, not just syntax: e.g. two replicas' global queue gauges are not summed.
    run(tool, "test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)


def test_alert_rules_name_only_exposed_metrics() -> None:
    names = exposed_names()
    alerts = {r["alert"] for r in rules()}
    assert {"ShimUpstreamDown", "ShimHigh5xxRate", "ShimCallbackQueueGrowing", "ShimCallbackOldestPendingOld",
            "ShimDeadLettersGrowing", "ShimIngestStopped", "ShimReconcileErrors"} <= alerts
    for rule in rules():
        used = used_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= names, f"{rule['alert']} names unknown metrics: {sorted(used - names)}"


def test_global_gauges_are_never_summed() -> None:
    """Queue gauges are the same on every replica (docs/runbook.md): ``sum`` would multiply them."""
    exprs = [r["expr"] for r in rules()] + dashboard_exprs()
    for expr in exprs:
        for gauge in ("shim_callback_queue_depth", "shim_callback_dead_letters", "shim_callback_oldest_pending_age_seconds"):
            assert not re.search(rf"\bsum\b(\s*(by|without)\s*\([^)]*\))?\s*\([^()]*\b{gauge}\b", expr), expr


def test_dashboard_parses_and_names_only_exposed_metrics(tmp_path: Path) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["panels"] and all(p.get("targets") for p in dash["panels"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    names = exposed_names()
    exprs = dashboard_exprs()
    for expr in exprs:
        used = used_names(expr)
        assert used and used <= names, f"{expr!r} names unknown metrics: {sorted(used - names)}"
    shown = set().union(*(used_names(e) for e in exprs))
    for wanted in ("shim_callback_oldest_pending_age_seconds", "shim_callback_ingest_to_delivered_seconds_bucket",
                   "shim_callback_attempts_total", "shim_http_request_duration_seconds_bucket"):
        assert wanted in shown, wanted
    # The PromQL itself: each panel query as a recording rule, for promtool to parse.
    tool = promtool()
    check = tmp_path / "dashboard_rules.yml"
    check.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
    run(tool, "check", "rules", str(check))
