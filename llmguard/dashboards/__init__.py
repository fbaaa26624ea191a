"""A Grafana dashboard and Prometheus alerting rules for llmguard's metrics, shipped as package data.

    from llmguard.dashboards import alerts_path, dashboard_path

    shutil.copy(dashboard_path(), "/var/lib/grafana/dashboards/llmguard.json")

`grafana.json` takes its Prometheus data source from the `DS_PROMETHEUS` input (Grafana asks for it on import) and
has `provider`, `model` and `feature` variables. `alerts.yml` is one rule group, `llmguard`, for `rule_files`.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

__all__ = ["alerts_path", "dashboard_path"]


def dashboard_path() -> Traversable:
    """The Grafana dashboard (JSON). A `pathlib.Path` when llmguard is installed as plain files."""
    return files(__name__) / "grafana.json"


def alerts_path() -> Traversable:
    """The Prometheus alerting rules (YAML). A `pathlib.Path` when llmguard is installed as plain files."""
    return files(__name__) / "alerts.yml"
