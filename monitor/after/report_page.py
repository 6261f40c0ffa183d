"""``monitor kill-report --html``: one self-contained page per run, opened from disk.

What it shows: a sortable table of the trials; the validation metric of every trial over
time; for each stopped trial the rule's (or the wrapped scheduler's) sentence and the signals
it read (the scheduler: the metric it ranked), against the band of
its healthy siblings at the same iterations, with the kill marked and the layers named, and
its output clip beside the baseline's at the same iteration (``<audio>`` and a spectrogram);
and every trial against the baseline (the best finished trial, or ``--baseline``), every
signal and metric side by side. Pictures are matplotlib's (``monitor.after.report_plots``) and the
audio is embedded: the file needs no network, no server and no other file.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from monitor.after import report_plots
from monitor.after.report import _fmt, changes_lines, rule_of, totals_line
from monitor.console import plain
from monitor.store import reading
from monitor.training import audio_samples

MAX_COMPARED = 30  # trials drawn against the baseline: a page stays about a minute and 30 MB

SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach((th, col) => {
  th.addEventListener('click', () => {
    const body = th.closest('table').tBodies[0];
    const up = th.dataset.order !== 'asc';
    th.closest('tr').querySelectorAll('th').forEach(h => delete h.dataset.order);
    th.dataset.order = up ? 'asc' : 'desc';
    const key = tr => tr.cells[col].dataset.sort ?? tr.cells[col].textContent;
    const rows = [...body.rows].sort((a, b) => {
      const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
      if (x === '' || y === '') return (x === '') - (y === '');  // no value: last
      const c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return up ? c : -c;
    });
    rows.forEach(r => body.appendChild(r));
  });
});
"""

STYLE = """
body{font-family:system-ui,sans-serif;max-width:72em;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f0f0f0;cursor:pointer;user-select:none}
th[data-order=asc]::after{content:' \\25B2'} th[data-order=desc]::after{content:' \\25BC'}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.KILLED td{background:#fdecea} tr.STOPPED td{background:#fff4e0}
tr.baseline td{background:#e8f5e9}
.reason{background:#fafafa;border-left:4px solid #d62728;padding:.5em 1em}
.plots img{width:560px;max-width:100%;margin:.2em} img.metric{width:900px;max-width:100%}
img.comparison{width:100%}
.audio{display:flex;gap:2em;flex-wrap:wrap} .audio figure{margin:0}
figcaption{font-size:.85em;color:#555}
section.kill{border-top:1px solid #ddd;margin-top:1.5em}
"""


def _e(text: object) -> str:
    return html.escape(plain(text))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _anchor(trial: str) -> str:
    return "t-" + "".join(c if c.isalnum() else "-" for c in plain(trial))


def _name(row: dict[str, Any]) -> str:
    return f"{row['variant']} ({row['trial']})" if row.get("variant") else row["trial"]


def _series(store, trial: str, signals: list[str]) -> dict[str, dict]:
    return {s: store.series(trial, s) for s in signals}


def _trials_table(report: dict[str, Any]) -> str:
    metric = report.get("metric") or "final metric"
    better = "lower is better" if report.get("mode", "min") == "min" else "higher is better"
    head = ["trial", "variant", "status", "stopped by", "iteration", "compute saved",
            f"final {metric} ({better})"]
    rows = []
    for r in report["trial_table"]:
        baseline = r["trial"] == report.get("baseline")
        cls = f"{r['status']}{' baseline' if baseline else ''}"
        value = r["final_metric"]
        saved = f"{r['saved_iterations']} it ({r['saved_hours']:.3f} h)"
        link = f"<a href='#{_anchor(r['trial'])}'>{_e(r['trial'])}</a>"
        rows.append(
            f"<tr class='{cls}'><td data-sort='{_e(r['trial'])}'>{link}</td>"
            f"<td>{_e(r['variant'] or '-')}</td><td>{_e(r['status'])}</td>"
            f"<td>{_e(r['decided_by'])}</td>"
            f"<td class='num' data-sort='{r['iteration']}'>{r['iteration']}/"
            f"{r['budget'] or '-'}</td>"
            f"<td class='num' data-sort='{r['saved_iterations']}'>{saved}</td>"
            f"<td class='num' data-sort='{value if _finite(value) else ''}'>{_fmt(value)}"
            f"{' (baseline)' if baseline else ''}</td></tr>")
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    return (f"<table class='sortable' id='trials'><thead><tr>{header}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _audio(path: Path | None, caption: str) -> str:
    if path is None:
        return f"<figure><figcaption>{_e(caption)}: no clip kept</figcaption></figure>"
    samples, rate = audio_samples.read_wav(path)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    picture = report_plots.spectrogram(samples, rate, caption)
    return (f"<figure><img class='spectrogram' alt='spectrogram: {_e(caption)}' "
            f"src='{picture}'><br><audio controls preload='none' "
            f"src='data:audio/wav;base64,{data}'></audio>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _listen(run_dir: Path, trial: str, baseline: str | None, iteration: int,
            names: dict[str, str]) -> str:
    """The trial's clip at ``iteration`` beside the baseline's, and the target voice."""
    mine = audio_samples.at_or_before(audio_samples.clips(run_dir, trial), iteration)
    if mine is None:
        return ""
    parts = [_audio(mine[1], f"{names[trial]} at iteration {mine[0]}")]
    if baseline and baseline != trial:
        theirs = audio_samples.at_or_before(audio_samples.clips(run_dir, baseline), mine[0])
        parts.append(_audio(theirs[1] if theirs else None,
                            f"baseline {names[baseline]} at iteration "
                            f"{theirs[0] if theirs else mine[0]}"))
    target = audio_samples.reference(run_dir, trial)
    if target is not None:
        parts.append(_audio(target, "target (what the output should sound like)"))
    return f"<h4>Listen</h4><div class='audio'>{''.join(parts)}</div>"


def _kill_section(kill: dict[str, Any], store, run_dir: Path, healthy: list[str],
                  baseline: str | None, names: dict[str, str], budget: int,
                  roles: dict[str, Any]) -> str:
    # a rule names roles (generator_loss); the store keeps the reported keys (loss_g)
    signals = list(dict.fromkeys(
        role if not isinstance(roles.get(role), str) else roles[role]
        for role in (label.split("{")[0] for label in kill["values"])))
    mine = _series(store, kill["trial"], signals)
    x_max = min(budget or kill["iteration"], max(2 * kill["iteration"], kill["iteration"] + 5))
    plots = []
    for signal in signals:
        if not mine[signal]:
            continue
        siblings = [store.series(t, signal) for t in healthy]
        picture = report_plots.evidence(signal, mine[signal], siblings, kill["iteration"], x_max)
        plots.append(f"<img class='plot evidence' alt='{_e(signal)} of {_e(kill['trial'])}' "
                     f"src='{picture}'>")
    by = (f"the wrapped scheduler {_e(kill['rule'])}" if kill.get("policy") == "scheduler"
          else f"rule {_e(rule_of(kill))}")
    read = "What the scheduler ranked" if kill.get("policy") == "scheduler" else \
        "What the rule read"
    per_layer = "" if kill.get("policy") == "scheduler" else ", one line per layer"
    band = (f"Grey: the middle 80% (10th to 90th percentile) and the median of the "
            f"{len(healthy)} healthy sibling(s) at the same iterations."
            if healthy else "No healthy sibling finished: no band to compare against.")
    return (f"<section class='kill' id='{_anchor(kill['trial'])}'>"
            f"<h3>{_e(names[kill['trial']])}: stopped at iteration {kill['iteration']} of "
            f"{kill['budget']} by {by}</h3>"
            f"<p class='reason'>{_e(kill['reason'])}</p>"
            f"<p>{read} ({_e(', '.join(signals))}){per_layer}. {band}</p>"
            f"<div class='plots'>{''.join(plots)}</div>"
            f"{_listen(run_dir, kill['trial'], baseline, kill['iteration'], names)}</section>")


def _all_signals(store, trial: str) -> list[str]:
    return sorted({signal for _, signal, _, _ in store.samples(trial)})


def _comparison(row: dict[str, Any], store, run_dir: Path, baseline: str,
                names: dict[str, str], signals: list[str]) -> str:
    panels = [(s, store.series(row["trial"], s), store.series(baseline, s)) for s in signals]
    stopped = row["iteration"] if row["status"] in ("KILLED", "STOPPED") else None
    picture = report_plots.comparison(panels, names[row["trial"]], names[baseline], stopped)
    anchor = "" if row["status"] in ("KILLED", "STOPPED") else f" id='{_anchor(row['trial'])}'"
    return (f"<details{anchor}><summary>{_e(names[row['trial']])}: {_e(row['status'])}, "
            f"{_e(row['decided_by'])}, final {_fmt(row['final_metric'])}</summary>"
            f"<img class='plot comparison' alt='{_e(row['trial'])} against the baseline' "
            f"src='{picture}'>{_listen(run_dir, row['trial'], baseline, row['iteration'], names)}"
            "</details>")


def _compared_first(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Stopped trials first, then the others best first (no metric: last)."""
    sign = -1 if mode == "max" else 1

    def key(r: dict[str, Any]) -> tuple:
        value = r["final_metric"]
        return (r["status"] not in ("KILLED", "STOPPED"), not _finite(value),
                sign * value if _finite(value) else 0.0)

    return sorted(rows, key=key)


def render(report: dict[str, Any], run_dir: Path) -> str:
    """The page (one HTML string with every picture and clip inside)."""
    rows = {r["trial"]: r for r in report["trial_table"]}
    names = {t: _name(r) for t, r in rows.items()}
    baseline = report.get("baseline")
    metric = report.get("metric")
    healthy = [t for t, r in rows.items() if r["status"] == "TERMINATED"
               and r.get("outcome") not in ("failed", "error")]
    budget = max((r["budget"] or 0 for r in rows.values()), default=0)
    with reading(run_dir) as store:
        roles = store.meta().get("vocabulary") or {}
        lines = {}
        if metric:
            for t, r in rows.items():
                points = store.series(t, metric).get("", [])
                finite = any(_finite(y) for _, y in points)
                label = names[t] + ("" if finite else " (no finite value)")
                lines[label] = {"points": points, "baseline": t == baseline,
                                "stopped": r["status"] in ("KILLED", "STOPPED")}
        over_time = (f"<img class='plot metric' alt='{_e(metric)} over time' "
                     f"src='{report_plots.metric_over_time(metric, lines)}'>"
                     if lines else "<p>No validation metric was declared for this run.</p>")
        kills = "".join(_kill_section(k, store, run_dir, [t for t in healthy if t != k["trial"]],
                                      baseline, names, k["budget"] or budget, roles)
                        for k in report["kills"] + report.get("scheduler_stops", []))
        compared = ""
        if baseline:
            signals = sorted(_all_signals(store, baseline), key=lambda s: s != metric)
            others = _compared_first([r for t, r in rows.items() if t != baseline],
                                     report.get("mode", "min"))
            compared = "".join(_comparison(r, store, run_dir, baseline, names, signals)
                               for r in others[:MAX_COMPARED])
            if others[MAX_COMPARED:]:
                left = ", ".join(_e(names[r["trial"]]) for r in others[MAX_COMPARED:])
                compared += (f"<p>Not drawn (at most {MAX_COMPARED} trials, stopped ones "
                             f"first, then by final {_e(metric)}): {left}.</p>")
    summary = _e(totals_line(report))
    base = (f"Baseline: <b>{_e(names[baseline])}</b> (final {_e(metric)} "
            f"{_fmt(rows[baseline]['final_metric'])})." if baseline else
            "No trial finished: there is no baseline to compare with.")
    notices = "".join(f"<li>{_e(n)}</li>" for n in report.get("notices", []))
    changes = "".join(f"<li>{_e(line)}</li>" for line in changes_lines(report))
    warnings = "".join(
        f"<li>{_e(w['rule'])} ({_e(w['failure'])}): {w['count']} "
        f"{'would-be kills (shadow)' if w['shadow_kill'] else 'warnings'} on "
        f"{len(w['trials'])} trial(s)</li>" for w in report["warnings"])
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Kill report {_e(report['run'])}</title><style>{STYLE}</style></head><body>"
        f"<h1>Kill report: {_e(report['run'])}</h1><p>{summary} {base}</p>"
        "<h2>Trials</h2><p>Click a column to sort; a trial's name leads to its evidence.</p>"
        f"{_trials_table(report)}"
        f"<h2>Validation metric over time</h2>{over_time}"
        f"<h2>Why each stopped trial was stopped</h2>"
        f"{kills or '<p>No trial was stopped by a rule or the wrapped scheduler.</p>'}"
        f"<h2>Each trial against the baseline</h2><p>{base} Every signal and metric; "
        f"open a trial to see it.</p>{compared}"
        + (f"<h2>Warnings</h2><ul>{warnings}</ul>" if warnings else "")
        + (f"<h2>Rule set changed while the run went on</h2><ul>{changes}</ul>"
           if changes else "")
        + (f"<h2>Rules</h2><p>{_e(report['rules'])}</p>" if report.get("rules") else "")
        + (f"<h2>Notices</h2><ul>{notices}</ul>" if notices else "")
        + f"<script>{SORT_SCRIPT}</script></body></html>")
