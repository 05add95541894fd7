"""Paths of the chart and observability files, and PromQL metric-name extraction."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "herald"
ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARDS = sorted((CHART / "files" / "dashboards").glob("*.json"))
KUBE_VERSION = "1.33.0"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))

Render = Callable[..., list[dict[str, Any]]]


# PromQL words that look like metric names but are functions, keywords or aggregations.
_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "rate", "irate", "increase", "delta", "idelta",
    "deriv", "histogram_quantile", "clamp_min", "clamp_max", "abs", "absent", "vector",
    "scalar", "time", "label_replace", "label_values", "sort", "sort_desc", "round",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "predict_linear",
    "le", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric (and recording-rule) names used in a PromQL expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # matchers: label names are not metrics
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)  # ranges
    expr = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][-+]?\d+)?", "0", expr)  # numbers such as 1e-9
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w.lower() not in _PROMQL_WORDS and not w.startswith("$")}


def alert_rules() -> list[dict[str, Any]]:
    """Every rule (alerting and recording) of the shipped rules file."""
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> dict[str, list[str]]:
    """PromQL of every panel target and templating query, per dashboard file."""
    out: dict[str, list[str]] = {}
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        for var in dash["templating"]["list"]:
            query = var.get("query")
            if isinstance(query, dict):
                # label_values(metric, label) names a metric too.
                exprs.append(re.sub(r",\s*\w+\)$", ")", query["query"]))
        out[path.name] = exprs
    return out
