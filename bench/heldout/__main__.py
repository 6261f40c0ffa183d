"""``python -m bench.heldout``: the held-out kill benchmark.

Runs (or reuses) the held-out population - architecture families the built-in rules were never
tuned on, healthy at several settings and broken late in known ways - then evaluates the
stopping policies of ``bench.policies`` on the recorded histories and writes
``bench/results/heldout/report.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress
from rich.table import Table

from bench import policies
from bench.heldout.analysis import separation
from bench.heldout.families import FAILURES
from bench.heldout.population import (
    ALL_FAILURES,
    ALL_FAMILIES,
    BUDGET,
    ELSEWHERE,
    ELSEWHERE_SPLITS,
    SPLITS,
    History,
    elsewhere_population,
    load_or_run,
    population,
    split_dir,
)
from bench.heldout.report import markdown
from monitor.console import console


def final_tail(budget: int) -> int:
    """Reports averaged into a trial's final quality: the last 10 % of the budget (single
    validation reports of small BatchNorm/GAN models are noisy)."""
    return max(1, budget // 10)


def as_trial(h: History) -> policies.Trial:
    """A recorded history as a policy trial, under its family's declaration (code, not data)."""
    vocabulary = dict(ALL_FAMILIES[h.family].vocabulary)
    return policies.Trial(h.name, h.family, h.failure, h.onset, h.budget,
                          vocabulary["validation"], vocabulary.get("mode", "min"), h.results,
                          vocabulary)


def device() -> str:
    import os

    return (f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores, "
            f"one torch thread per trial, shared with other work)")


def commit() -> str | None:
    """The checkout's commit (the rules evaluated), with ``+`` when the tree has changes."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "heuristics"],
                               cwd=root, text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+" if dirty else "")


def train(families: list[str] | None, retrain: bool, out: Path, budget: int,
          split: str = "development", which: str = "own") -> tuple[list[History], int]:
    """Recorded histories of the split (trained now where missing, one trial at a time);
    ``which``: ``own`` (this project's families) or ``elsewhere``."""
    specs = elsewhere_population(budget, split) if which == ELSEWHERE else population(
        budget, split)
    specs = [s for s in specs if not families or s.family in families]
    histories: list[History] = []
    trained = 0
    with Progress(console=console) as progress:
        task = progress.add_task("held-out trials", total=len(specs))
        for spec in specs:
            progress.update(task, description=f"trial {spec.name}")
            sub = progress.add_task(f"  {spec.name}", total=spec.budget)
            try:
                h, ran = load_or_run(spec, out / "histories", retrain,
                                     lambda it, sub=sub: progress.update(sub, completed=it))
            except ImportError as exc:  # timm, parallel-wavegan: optional (the bench extra)
                console.print(f"[yellow]skipped {spec.name}: {exc}[/yellow]")
                progress.remove_task(sub)
                progress.advance(task)
                continue
            progress.remove_task(sub)
            trained += ran
            histories.append(h)
            progress.advance(task)
    return histories, trained


def run(families: list[str] | None, retrain: bool, out: Path, budget: int,
        rule_sources: list[str], split: str = "development",
        which: str = "own") -> dict[str, Any]:
    from heuristics.rules import load_rules

    histories, trained = train(families, retrain, out, budget, split, which)
    trials = [as_trial(h) for h in histories]
    rules = load_rules(rule_sources)
    with console.status("evaluating policies"):
        evaluation = policies.evaluate(trials, policies.POLICIES, rules, tail=final_tail(budget))
        firings = policies.rule_firings(trials, rules)
        ablation = []
        for rule in rules:  # what each rule contributes: the heuristic policy without it
            others = [r for r in rules if r is not rule]
            truth = evaluation["truth"]
            p = policies.score("heuristic", trials,
                               policies.simulate(policies.make("heuristic", others), trials),
                               truth)
            ablation.append({"without": rule.name, **{k: p[k] for k in (
                "caught", "really_failing", "false_kills", "premature_kills",
                "killed_recovered", "median_delay_iterations", "saved_pct")}})
    return {
        "device": device(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rules": rule_sources, "commit": commit(), "split": split, "population": which,
        "budget": budget, "final_tail": final_tail(budget), "trained_now": trained,
        "failures": ALL_FAILURES if which == ELSEWHERE else FAILURES,
        "training_seconds": sum(h.seconds for h in histories),
        "trials": [{"trial": h.name, "family": h.family, "variant": h.variant,
                    "failure": h.failure, "onset": h.onset, "setting": h.setting,
                    "seed": h.seed, "metric": h.metric, "mode": h.mode,
                    "vocabulary": ALL_FAMILIES[h.family].vocabulary, "seconds": h.seconds,
                    **evaluation["truth"][h.name]} for h in histories],
        "policies": evaluation["policies"],
        "by_family": {p["policy"]: policies.by_group(p) for p in evaluation["policies"]},
        "firings": firings,
        "ablation": ablation,
        "separation": separation(trials),
    }


def table(report: dict[str, Any]) -> Table:
    def f(x: Any, spec: str = ".2f") -> str:
        return "-" if x is None else format(x, spec)

    t = Table(title="Held-out kill benchmark: policies on the same recorded trials")
    t.add_column("policy", no_wrap=True)
    for col in ("its", "saved", "recall", "false", "early", "prec", "delay", "d%", "lead"):
        t.add_column(col, justify="right")
    for p in report["policies"]:
        t.add_row(p["policy"], str(p["trial_iterations"]), f"{p['saved_pct']:.0f}%",
                  f"{p['caught']}/{p['really_failing']}", str(p["false_kills"]),
                  str(p["premature_kills"]), f(p["precision"]),
                  f(p["median_delay_iterations"], ".1f"), f(p["median_delay_pct_budget"], ".1f"),
                  f(p["median_lead"], ".1f"))
    t.caption = ("its: trial-iterations run; recall: caught/really failing; false: healthy "
                 "trials stopped; early: broken trials stopped before their onset; delay: "
                 "median stop - onset (d%: of the budget); lead: median reports the kill "
                 "came before the quality metric showed it")
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retrain", action="store_true",
                        help="train every trial again instead of reusing recorded histories")
    parser.add_argument("--families", nargs="+", default=None,
                        help="only these families (mlp cnn transformer gan timm)")
    parser.add_argument("--rules", nargs="+", default=["builtin"],
                        help="rule sources for the heuristic policies (default: builtin)")
    parser.add_argument("--budget", type=int, default=BUDGET, help="iterations per trial")
    parser.add_argument("--split", choices=sorted(set(SPLITS) | set(ELSEWHERE_SPLITS)),
                        default="development",
                        help="development: the seeds the old rules were studied on; fresh: new "
                             "seeds that played no part in any choice (default out: "
                             "bench/results/heldout/fresh)")
    parser.add_argument("--population", choices=("own", ELSEWHERE), default="own",
                        help="own: this project's five families; elsewhere: families built "
                             "from code written elsewhere (parallel-wavegan vocoders, LSTM, "
                             "WGAN-GP, BCE GAN, VAE; out: bench/results/heldout/elsewhere/"
                             "<split>). Its fresh splits are read once, after the rules are "
                             "frozen and committed")
    parser.add_argument("--train-only", action="store_true",
                        help="record the split's histories, evaluate nothing")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    splits = ELSEWHERE_SPLITS if args.population == ELSEWHERE else SPLITS
    if args.split not in splits:
        parser.error(f"--split {args.split}: the {args.population} population's splits are "
                     f"{', '.join(splits)}")
    if args.out is None:
        args.out = split_dir(args.split, which=args.population)
    started = time.time()
    if args.train_only:
        histories, trained = train(args.families, args.retrain, args.out, args.budget,
                                   args.split, args.population)
        console.print(f"{len(histories)} histories in {args.out / 'histories'} ({trained} "
                      f"trained now, {time.time() - started:.0f} s)")
        return 0
    report = run(args.families, args.retrain, args.out, args.budget, args.rules, args.split,
                 args.population)
    report["seconds"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    console.print(table(report))
    console.print(f"wrote {args.out / 'report.json'} and {args.out / 'report.md'} "
                  f"({report['seconds']:.0f} s; {report['trained_now']} trials trained now, "
                  f"{report['training_seconds']:.0f} s of training recorded)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
