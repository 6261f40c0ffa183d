"""Grafana dashboards as code (grafana-foundation-sdk); ``python -m dashboards.build`` writes
``dashboards/json/*.json``, which are committed (a test fails when they are stale).

Two dashboards: an experiment overview (every trial's health at a glance) and a trial
drill-down (per-layer heatmaps, spread, power, losses, gradient norm, kill and warning marks).
Every panel queries the ``${datasource}`` Prometheus variable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as d
from grafana_foundation_sdk.builders import heatmap, stat, timeseries
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableRefresh,
)

OUT = Path(__file__).parent / "json"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
EXP = 'experiment=~"$experiment"'
SEL = 'experiment=~"$experiment", trial=~"$trial"'


def query(expr: str, legend: str, ref: str = "A") -> prom.Dataquery:
    return prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)


def series(title: str, expr: str, legend: str, unit: str = "none", w: int = 12, h: int = 8,
           description: str = "", min_val: float | None = None,
           max_val: float | None = None) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).datasource(DS)
             .unit(unit).height(h).span(w).with_target(query(expr, legend)))
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    return panel


def variables(board: d.Dashboard, with_layer: bool) -> d.Dashboard:
    board = board.with_variable(
        d.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    board = board.with_variable(
        d.QueryVariable("experiment").label("Experiment").datasource(DS)
        .query("label_values(tune_health_trial_info, experiment)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True))
    board = board.with_variable(
        d.QueryVariable("trial").label("Trial").datasource(DS)
        .query(f"label_values(tune_health_trial_info{{{EXP}}}, trial)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True))
    if with_layer:
        board = board.with_variable(
            d.QueryVariable("layer").label("Layer").datasource(DS)
            .query(f"label_values(tune_health_dead_ratio{{{SEL}}}, layer)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True))
    return board


def kill_annotations(board: d.Dashboard) -> d.Dashboard:
    kills = (d.AnnotationQuery().name("Kills").datasource(DS).enable(True).icon_color("red")
             .expr(f"changes(tune_health_kills_total{{{EXP}}}[1m]) > 0"))
    warnings = (d.AnnotationQuery().name("Warnings").datasource(DS).enable(True)
                .icon_color("orange")
                .expr(f"changes(tune_health_warnings_total{{{EXP}}}[1m]) > 0"))
    posted = (d.AnnotationQuery().name("Kills posted by the scheduler (tag: $trial)")
              .datasource(DataSourceRef(type_val="grafana", uid="-- Grafana --"))
              .enable(True).icon_color("dark-red").type("tags")
              .target(d.AnnotationTarget().type("tags").tags(["tune-health"]).match_any(True)
                      .limit(500)))
    return board.annotation(kills).annotation(warnings).annotation(posted)


def overview() -> d.Dashboard:
    board = (d.Dashboard("Training health: experiment overview").uid("tune-health-overview")
             .tags(["tune-health", "generated"]).refresh("10s").time("now-1h", "now")
             .tooltip(DashboardCursorSync.CROSSHAIR).editable())
    board = kill_annotations(variables(board, with_layer=False))
    board = (board
             .with_row(d.Row("At a glance"))
             .with_panel(stat.Panel().title("Trials reporting").datasource(DS).height(4).span(6)
                         .with_target(query(f"count(tune_health_trial_info{{{EXP}}})",
                                            "trials")))
             .with_panel(stat.Panel().title("Kills by rule").datasource(DS).height(4).span(9)
                         .with_target(query(f"sum by (rule) (tune_health_kills_total{{{EXP}}})",
                                            "{{rule}}")))
             .with_panel(stat.Panel().title("Warnings by rule").datasource(DS).height(4)
                         .span(9).with_target(query(
                             f"sum by (rule) (tune_health_warnings_total{{{EXP}}})", "{{rule}}")))
             .with_row(d.Row("Units"))
             .with_panel(series("Dead units (worst layer)",
                                f"max by (trial) (tune_health_dead_ratio{{{SEL}}})", "{{trial}}",
                                "percentunit", min_val=0, max_val=1,
                                description="Largest fraction of never-firing units in any "
                                "layer, per trial"))
             .with_panel(series("Evergreen units (worst layer)",
                                f"max by (trial) (tune_health_evergreen_ratio{{{SEL}}})",
                                "{{trial}}", "percentunit", min_val=0, max_val=1))
             .with_panel(series("Activation spread (mean over layers)",
                                f"avg by (trial) (tune_health_activation_std{{{SEL}}})",
                                "{{trial}}"))
             .with_panel(series("Non-finite activations",
                                f"sum by (trial) (tune_health_nonfinite_activations{{{SEL}}})",
                                "{{trial}}"))
             .with_row(d.Row("Power and quality"))
             .with_panel(series("Output / target power",
                                f"tune_health_power_ratio_db{{{SEL}}}", "{{trial}}", "dB"))
             .with_panel(series("Power loss", f"tune_health_power_loss{{{SEL}}}", "{{trial}}"))
             .with_panel(series("Validation metric (the experiment's declared one)",
                                f"tune_health_validation{{{SEL}}}", "{{trial}} {{metric}}"))
             .with_panel(series("Discriminator loss",
                                f'tune_health_loss{{{SEL}, loss="discriminator"}}', "{{trial}}"))
             .with_row(d.Row("Kills"))
             .with_panel(series("Kills by rule",
                                f"sum by (rule, failure) (tune_health_kills_total{{{EXP}}})",
                                "{{rule}}", w=24)))
    return board


def drilldown() -> d.Dashboard:
    lsel = f'{SEL}, layer=~"$layer"'
    board = (d.Dashboard("Training health: trial drill-down").uid("tune-health-trial")
             .tags(["tune-health", "generated"]).refresh("10s").time("now-1h", "now")
             .tooltip(DashboardCursorSync.CROSSHAIR).editable())
    board = kill_annotations(variables(board, with_layer=True))

    def layer_heatmap(title: str, metric: str) -> heatmap.Panel:
        return (heatmap.Panel().title(title).datasource(DS).height(8).span(12)
                .with_target(query(f"avg by (layer) ({metric}{{{lsel}}})", "{{layer}}")))

    board = (board
             .with_row(d.Row("Units per layer"))
             .with_panel(layer_heatmap("Dead units per layer", "tune_health_dead_ratio"))
             .with_panel(layer_heatmap("Evergreen units per layer",
                                       "tune_health_evergreen_ratio"))
             .with_panel(series("Activation spread per layer",
                                f"tune_health_activation_std{{{lsel}}}", "{{trial}} {{layer}}"))
             .with_panel(series("Mean activation per layer",
                                f"tune_health_activation_mean{{{lsel}}}", "{{trial}} {{layer}}"))
             .with_panel(series("Saturated units per recurrent layer",
                                f"tune_health_saturated_ratio{{{lsel}}}", "{{trial}} {{layer}}",
                                "percentunit", min_val=0, max_val=1,
                                description="LSTM/GRU/RNN: fraction of units pinned near +-1 "
                                "over the window (no gradient through their gates)"))
             .with_row(d.Row("Output power"))
             .with_panel(series("Output and target power",
                                f"tune_health_output_power_db{{{SEL}}} or "
                                f"tune_health_target_power_db{{{SEL}}}",
                                "{{trial}} {{__name__}}", "dB"))
             .with_panel(series("Power loss", f"tune_health_power_loss{{{SEL}}}", "{{trial}}"))
             .with_row(d.Row("Optimisation"))
             .with_panel(series("Losses", f"tune_health_loss{{{SEL}}}", "{{trial}} {{loss}}"))
             .with_panel(series("Gradient norm", f"tune_health_gradient_norm{{{SEL}}}",
                                "{{trial}}")))
    return board


DASHBOARDS = {"overview": overview, "trial": drilldown}


def render() -> dict[str, str]:
    """``{file name: JSON text}`` for every dashboard (deterministic)."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    out = {}
    for name, make in DASHBOARDS.items():
        model = json.loads(encoder.encode(make().build()))
        layout(model)
        out[f"{name}.json"] = json.dumps(model, sort_keys=True, indent=2) + "\n"
    return out


def layout(model: dict[str, Any]) -> None:
    """Give panels unique ids and grid positions in reading order (24 columns)."""
    x = y = row_height = 0
    for i, panel in enumerate(model.get("panels", []), 1):
        panel["id"] = i
        w = panel.pop("span", None) or panel.get("gridPos", {}).get("w") or 12
        h = panel.get("gridPos", {}).get("h") or (1 if panel.get("type") == "row" else 8)
        if panel.get("type") == "row":
            x, y, w, h = 0, y + row_height, 24, 1
            panel["gridPos"] = {"x": 0, "y": y, "w": 24, "h": 1}
            y, row_height = y + 1, 0
            continue
        if x + w > 24:
            x, y, row_height = 0, y + row_height, 0
        panel["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
        row_height = max(row_height, h)


def main(argv: list[str] | None = None) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
