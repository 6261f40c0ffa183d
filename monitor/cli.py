"""The ``monitor`` command."""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

from rich.table import Table

from monitor.console import console, print_error, print_warning, print_wide, safe
from monitor.driver.summary import plain
from monitor.paths import runs_dir

FAILURE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")  # as a rule's labels.failure


def _experiment_file(path: str):
    """Rule sources, vocabulary and base directory of an experiment YAML file: its
    ``heuristics:`` list and ``signals:`` mapping (any file with these keys will do)."""
    from pydantic import ValidationError

    from heuristics.vocabulary import Vocabulary
    from heuristics.yamlfile import ConfigError, line_of, load_yaml

    file = Path(path)
    data, lines = load_yaml(file)
    if not isinstance(data, dict):
        raise ConfigError(file, 1, "expected a mapping with 'heuristics' and 'signals'")
    sources = data.get("heuristics", ["builtin", "custom"])
    if not isinstance(sources, list) or not all(isinstance(x, str) for x in sources):
        raise ConfigError(file, line_of(lines, ("heuristics",)), "heuristics: expected a list "
                          "of rule sources")
    signals = dict(data.get("signals") or {})
    if "metric" in data:
        signals.setdefault("validation", data["metric"])
    if "mode" in data:
        signals.setdefault("mode", data["mode"])
    try:
        vocabulary = Vocabulary.from_mapping(signals)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(file, line_of(lines, ("signals", *first["loc"])),
                          f"signals.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    return sources, vocabulary, file.parent


RUN_SOURCES = ["builtin", "custom"]  # what TuneMonitor and LoopMonitor load by default


def _vocabulary_of(args: argparse.Namespace):
    """``(sources, vocabulary, base, experiment name)`` from ``--experiment FILE`` or the
    ``--role ROLE=KEY`` options (with a run's own sources), or None when neither is given;
    ``ConfigError`` (one line) for a malformed one."""
    from pydantic import ValidationError

    from heuristics.vocabulary import Vocabulary
    from heuristics.yamlfile import ConfigError

    if args.experiment:
        sources, vocabulary, base = _experiment_file(args.experiment)
        return sources, vocabulary, base, args.experiment_name or Path(args.experiment).stem
    if not args.role:
        return None
    fields = [f for f in Vocabulary.model_fields if f != "role"]
    mapping: dict[str, str] = {}
    for item in args.role:
        role, sep, key = item.partition("=")
        if not sep or role.strip() not in fields or not key.strip():
            raise ConfigError("--role", None, f"expected ROLE=KEY with ROLE one of "
                              f"{', '.join(fields)} (e.g. --role validation=val_loss), got "
                              f"{item!r}")
        mapping[role.strip()] = key.strip()
    try:
        vocabulary = Vocabulary.from_mapping(mapping)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(map(str, first["loc"]))
        raise ConfigError("--role", None, f"{field}={mapping.get(field)!r}: "
                          f"{first['msg'].removeprefix('Value error, ')}") from None
    return list(RUN_SOURCES), vocabulary, None, args.experiment_name or ""


def _applicability(rules, vocabulary, experiment: str) -> None:
    """Which of ``rules`` apply with ``vocabulary`` (the line a run starts with), then one
    warning per rule of the user's that cannot fire, and per rule for other experiments."""
    from heuristics.coverage import applicability

    app = applicability(rules, vocabulary, experiment)
    who = f" for experiment {experiment}" if experiment else ""
    print_wide(console, safe(f"With this vocabulary{who}: {app.line()}"))
    for n in app.notices:
        print_warning(n.message)
    by_name = {r.name: r for r in rules}
    for name in app.elsewhere:
        r = by_name[name]
        print_warning(f"rule {name} ({r.source}:{r.line}) is for experiments "
                      f"{', '.join(r.experiments)}, not {experiment}: left out")


def _rules_check(args: argparse.Namespace) -> int:
    from heuristics.rules import RuleErrors, load_rules
    from heuristics.yamlfile import ConfigError

    try:
        rules = load_rules(args.paths)
        declared = _vocabulary_of(args)
        if declared:  # the rule set a run would have: its sources and these files, together
            sources, vocabulary, base, experiment = declared
            everything = load_rules([*sources, *args.paths], base=base)
    except RuleErrors as exc:
        for error in exc.errors:
            print_error(str(error))
        console.print(f"{len(exc.errors)} error(s) in {safe(', '.join(args.paths))}")
        return 1
    except ConfigError as exc:
        print_error(str(exc))
        return 2
    console.print(f"OK: {len(rules)} rules in {safe(', '.join(args.paths))}")
    if declared:
        _applicability(everything, vocabulary, experiment)
    return 0


def _rules_list(args: argparse.Namespace) -> int:
    from heuristics.rules import RuleErrors, custom_dir, load_rules
    from heuristics.yamlfile import ConfigError

    sources, base, declared = [*RUN_SOURCES, *args.rules], None, None
    try:
        declared = _vocabulary_of(args)
        if declared:
            sources = [*declared[0], *args.rules]
            base = declared[2]
        rules = load_rules(sources, base=base)
    except ConfigError as exc:
        print_error(str(exc))
        return 2
    except RuleErrors as exc:
        for error in exc.errors:
            print_error(str(error))
        return 1
    if args.format == "json":
        print(json.dumps([{"name": r.name, "group": r.group, "expr": r.expr,
                           "for": r.hold.describe(), "grace": r.grace.fraction
                           if r.grace.fraction is not None else r.grace.iterations,
                           "labels": r.labels, "annotations": r.annotations,
                           "experiments": list(r.experiments) or None,
                           "source": f"{r.source}:{r.line}"} for r in rules], indent=2))
        return 0
    shown = [f"custom = {custom_dir()}" if s == "custom" else str(s) for s in sources]
    table = Table(title=plain(f"Effective rules ({', '.join(shown)})"))
    for col in ("rule", "action", "failure", "expression", "for", "grace", "source"):
        table.add_column(col, overflow="fold")
    for r in rules:
        grace = (f"{100 * r.grace.fraction:g}%" if r.grace.fraction is not None
                 else str(r.grace.iterations))
        where = f"{Path(r.source).name}:{r.line}"
        if r.experiments:
            where += f" (experiments: {', '.join(r.experiments)})"
        table.add_row(plain(r.name), r.action, plain(r.failure), plain(r.expr),
                      r.hold.describe(), grace, plain(where))
    print_wide(console, table)
    if declared:
        _applicability(rules, declared[1], declared[3])
    return 0


def _rules_request(args: argparse.Namespace, op: str, **payload) -> int:
    """Send a rule change to the driver of a run and print its one-line answer (changing the
    rules of a running sweep: ``monitor.driver.rulechanges``)."""
    from monitor.after.report import find_run
    from monitor.driver.rulechanges import Requests, user_name
    from monitor.driver.verdicts import RunLock
    from monitor.store import StoreError

    try:
        run_dir = find_run(args.storage, args.run)
    except StoreError as exc:
        print_error(str(exc))
        return 2
    lock = RunLock(run_dir)
    driver_down = lock.acquire()
    lock.release()
    if driver_down and (run_dir / "summary.json").exists():
        print_error(f"{run_dir.name} has ended: no driver takes rule changes (judge rules on it "
                    "with `monitor replay`)")
        return 2
    requests = Requests(run_dir)
    rid = requests.submit(op, user=user_name(), **payload)
    if driver_down:
        return _answer(args, {"ok": True, "queued": True, "message": f"queued: no driver runs "
                              f"{run_dir.name} now; the request is taken when the run is "
                              "resumed"})
    answer = requests.wait(rid, args.timeout)
    if answer is None and requests.withdraw(rid):
        print_error(f"{run_dir.name}: the driver did not take the request within "
                    f"{args.timeout:g} s (it looks between two results); withdrawn")
        return 2
    answer = answer or requests.wait(rid, args.timeout) or {"ok": False, "message":
                                                            "taken, but no answer came"}
    return _answer(args, answer)


def _answer(args: argparse.Namespace, answer: dict) -> int:
    """The driver's answer: one line (a refusal on stderr, exit 1), or its JSON."""
    if args.format == "json":
        print(json.dumps(answer, indent=2, default=str))
    elif not answer.get("ok"):
        print_error(f"refused: {answer.get('message')}")
    else:
        console.print(safe(answer.get("message", "done")))
    return 0 if answer.get("ok") else 1


def _rules_apply(args: argparse.Namespace) -> int:
    from heuristics.rules import RuleErrors, load_rules_text
    from heuristics.vocabulary import Vocabulary
    from heuristics.yamlfile import ConfigError, read_text
    from monitor.after.report import find_run
    from monitor.driver.rulechanges import RuleChangeError, check_against_run, one_line
    from monitor.store import StoreError, reading

    try:  # checked here first, so that a bad file is refused even with no driver up
        text = read_text(args.file, "a rule file")
        rules = load_rules_text(text, args.file)
        with reading(find_run(args.storage, args.run)) as store:
            meta, reported = store.meta(), store.signal_names()
        check_against_run(rules, Vocabulary.from_mapping(meta.get("vocabulary") or {}),
                          meta.get("experiment", ""), reported)
    except (RuleErrors, ConfigError) as exc:
        return _answer(args, {"ok": False, "message": one_line(exc, args.file)})
    except RuleChangeError as exc:
        return _answer(args, {"ok": False, "message": str(exc)})
    except StoreError as exc:
        print_error(str(exc))
        return 2
    return _rules_request(args, "apply", text=text, file=str(Path(args.file).resolve()))


def _rules_arm(args: argparse.Namespace) -> int:
    return _rules_request(args, "arm", rule=args.rule)


def _rules_retire(args: argparse.Namespace) -> int:
    return _rules_request(args, "retire", rule=args.rule, version=args.version)


def _rules_status(args: argparse.Namespace) -> int:
    from monitor.after.report import find_run
    from monitor.driver.rulestatus import build, print_table
    from monitor.store import StoreError

    try:
        status = build(find_run(args.storage, args.run))
    except StoreError as exc:
        print_error(str(exc))
        return 2
    if args.format == "json":
        print(json.dumps(status, indent=2, default=str))
    else:
        print_table(status, console)
    return 0


def _rules_export(args: argparse.Namespace) -> int:
    from monitor.after.report import find_run
    from monitor.driver.rulestatus import export
    from monitor.durability import write_atomic
    from monitor.store import StoreError

    try:
        text, shown = export(find_run(args.storage, args.run))
    except StoreError as exc:
        print_error(str(exc))
        return 2
    if args.output is None:
        print(text, end="")
        return 0
    try:
        write_atomic(args.output, text)
    except OSError as exc:
        print_error(f"{args.output}: cannot be written ({exc.strerror or exc})")
        return 2
    console.print(safe(f"wrote {len(shown)} acting rules to {args.output} (check: monitor "
                       f"rules check {args.output})"))
    return 0


def _kill_report(args: argparse.Namespace) -> int:
    from monitor.after import report, report_page
    from monitor.store import StoreError

    try:
        run_dir = report.find_run(args.storage, args.experiment)
        data = report.build(run_dir, args.baseline)
        page = report_page.render(data, run_dir) if args.html else None
    except StoreError as exc:
        print_error(str(exc))
        return 2
    if args.format == "table":
        report.print_table(data, console)
    else:
        print(report.render(data, args.format), end="")
    if page is not None:
        try:
            report.write_html(args.html, page)
        except StoreError as exc:
            print_error(str(exc))
            return 2
        console.print(f"wrote {safe(args.html)}")
    return 0


def _run_dirs(args: argparse.Namespace) -> list[Path]:
    from monitor.after.report import find_run

    return [find_run(args.storage, e) for e in (args.experiments or [None])]


def _label(args: argparse.Namespace) -> int:
    from monitor.after.replay import known_failures, label
    from monitor.after.report import find_run
    from monitor.store import StoreError

    if args.healthy == bool(args.failure):
        print_error("give exactly one of --failure NAME or --healthy")
        return 2
    if args.failure and (not FAILURE_NAME.fullmatch(args.failure) or args.failure == "healthy"):
        print_error(f"--failure: expected a failure name in snake_case, as rules' "
                    f"labels.failure (e.g. dead_relu_collapse), got {args.failure!r} (a healthy "
                    "trial: --healthy)")
        return 2
    try:
        run_dir = find_run(args.storage, args.experiment)
        if args.failure and not args.new and args.failure not in (known := known_failures(
                run_dir)):
            close = difflib.get_close_matches(args.failure, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            print_error(f"--failure: {args.failure!r} is a failure no rule and no trial of this "
                        f"run names; {hint}known: {', '.join(sorted(known))} (a new failure "
                        "name: add --new)")
            return 2
        trial = label(run_dir, args.trial, "healthy" if args.healthy else args.failure)
    except (StoreError, KeyError) as exc:
        print_error(str(exc))
        return 2
    console.print(safe(f"{trial['trial_id']} ({trial.get('variant')}): outcome "
                       f"{trial['outcome']}"))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from heuristics.rules import RuleErrors, load_rules
    from monitor.after.replay import print_table as replay_table
    from monitor.after.replay import replay
    from monitor.store import StoreError

    try:
        rules = load_rules(args.rules)
        result = replay(_run_dirs(args), rules)
    except RuleErrors as exc:
        print_error(f"the rules do not load:\n{exc}")
        return 1
    except StoreError as exc:
        print_error(str(exc))
        return 2
    if args.format == "json":
        print(json.dumps(result, indent=2, default=str))
        return 0
    replay_table(result, console)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from monitor.after import calibrate
    from monitor.store import StoreError

    try:
        run_dirs = _run_dirs(args)
        trials = calibrate.load(run_dirs)
    except StoreError as exc:
        print_error(str(exc))
        return 2
    failing = sum(t["failing"] for t in trials)
    if failing < 2 or len(trials) - failing < 2:
        print_error(f"need at least 2 failing and 2 healthy trials with outcomes; found "
                    f"{failing} failing, {len(trials) - failing} healthy (label trials with "
                    "`monitor label`)")
        return 2
    rows = calibrate.analyse(trials)
    calibrate.print_table(rows, trials, args.top, console)
    suggestion = calibrate.suggest(rows, trials)
    try:
        calibrate.write_rules(args.output, suggestion, [p.name for p in run_dirs])
    except StoreError as exc:
        print_error(str(exc))
        return 2
    console.print(f"wrote {len(suggestion['groups'][0]['rules'])} suggested rules to "
                  f"{safe(args.output)} (check: monitor rules check {safe(args.output)}; score: "
                  f"monitor replay EXP --rules {safe(args.output)})")
    return 0


def _dashboards_push(args: argparse.Namespace) -> int:
    import os

    from monitor.serving.grafana import GrafanaError, push

    url = args.url or os.environ.get("GRAFANA_URL", "")
    try:
        answers = push(url, os.environ.get("GRAFANA_TOKEN"), folder_uid=args.folder_uid)
    except GrafanaError as exc:
        print_error(str(exc))
        return 2
    for a in answers:
        console.print(safe(f"pushed {a.get('uid')} (version {a.get('version')}) "
                           f"{a.get('url', '')}"))
    return 0


def _dashboards_build(args: argparse.Namespace) -> int:
    try:
        from dashboards import build
    except ModuleNotFoundError as exc:
        print_error(f"building dashboards needs {exc.name}: pip install "
                    "'voice-monitor[dashboards]' (the JSON is shipped; `monitor dashboards push` "
                    "does not need it)")
        return 2
    return build.main([])


def _rules_change_commands(rules) -> None:
    """``rules apply|arm|retire|status RUN``: change the rules of a running sweep."""
    storage = {"type": Path, "default": runs_dir(),
               "help": "where runs are (default: $MONITOR_RUNS_DIR or ./runs)"}
    run_help = "experiment name (its latest run) or run directory"
    wait = {"type": float, "default": 60.0,
            "help": "seconds to wait for the driver's answer (default 60)"}
    def change(name: str, help_: str, func, *args: tuple[str, dict]) -> None:
        """A command sent to the run's driver: RUN, its own arguments, then where runs are,
        how long to wait for the answer and the output format."""
        p = rules.add_parser(name, help=help_)
        p.add_argument("run", help=run_help)
        for flag, options in args:
            p.add_argument(flag, **options)
        p.add_argument("--storage", **storage)
        p.add_argument("--timeout", **wait)
        p.add_argument("--format", choices=("text", "json"), default="text")
        p.set_defaults(func=func)

    change("apply", "apply a rule file to a running sweep, in shadow: checked, replayed over "
           "the recorded history, then live", _rules_apply,
           ("file", {"help": "a rule file (Prometheus layout, as `rules check` reads)"}))
    change("arm", "make a shadow rule of a running sweep act", _rules_arm, ("rule", {}))
    change("retire", "remove a rule (or one version of it) from a running sweep", _rules_retire,
           ("rule", {}), ("--version", {"help": "the version to retire, where the rule has an "
                                          "armed and a shadow one"}))
    p = rules.add_parser("status", help="a run's rule set by revision: each rule applied "
                         "since the start, its would-be kills beside the trials' outcomes")
    p.add_argument("run", help=run_help)
    p.add_argument("--storage", **storage)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_rules_status)
    p = rules.add_parser("export", help="a run's acting rules now (armed versions) as one "
                         "rule file, for the next sweep")
    p.add_argument("run", help=run_help)
    p.add_argument("--output", "-o", type=Path, help="write here (default: print)")
    p.add_argument("--storage", **storage)
    p.set_defaults(func=_rules_export)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="monitor", description="Training-health monitor and "
                                     "early-kill scheduler for Ray Tune")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("kill-report", help="what was killed, why, and the compute it saved")
    p.add_argument("experiment", nargs="?", help="experiment name or run directory "
                   "(default: the latest run)")
    p.add_argument("--storage", type=Path, default=runs_dir(),
                   help="where runs are (default: $MONITOR_RUNS_DIR or ./runs)")
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    p.add_argument("--html", type=Path, help="also write a self-contained HTML page (trials, "
                   "evidence against healthy siblings, comparison with the baseline, audio)")
    p.add_argument("--baseline", help="trial to compare with: id, id suffix or variant "
                   "(default: the best finished trial)")
    p.set_defaults(func=_kill_report)
    p = sub.add_parser("label", help="set a trial's outcome (healthy or a failure name)")
    p.add_argument("experiment", help="experiment name or run directory")
    p.add_argument("trial", help="trial id (or its unique suffix)")
    p.add_argument("--failure")
    p.add_argument("--healthy", action="store_true")
    p.add_argument("--new", action="store_true",
                   help="the failure name is one no rule and no trial names yet")
    p.add_argument("--storage", type=Path, default=runs_dir(),
                   help="where runs are (default: $MONITOR_RUNS_DIR or ./runs)")
    p.set_defaults(func=_label)
    p = sub.add_parser("replay", help="evaluate a rule set over recorded runs")
    p.add_argument("experiments", nargs="*", help="experiment names or run directories "
                   "(default: the latest run)")
    p.add_argument("--rules", nargs="+", default=["builtin", "custom"])
    p.add_argument("--storage", type=Path, default=runs_dir(),
                   help="where runs are (default: $MONITOR_RUNS_DIR or ./runs)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_replay)
    p = sub.add_parser("calibrate", help="correlate signals with known failures; suggest rules")
    p.add_argument("experiments", nargs="*", help="experiment names or run directories")
    p.add_argument("--storage", type=Path, default=runs_dir(),
                   help="where runs are (default: $MONITOR_RUNS_DIR or ./runs)")
    p.add_argument("--output", type=Path, default=Path("calibrated_rules.yaml"))
    p.add_argument("--top", type=int, default=15)
    p.set_defaults(func=_calibrate)
    dash = sub.add_parser("dashboards", help="Grafana dashboards").add_subparsers(
        dest="dashboards_command", required=True)
    p = dash.add_parser("push", help="create or overwrite the dashboards in Grafana (by uid); "
                        "token from GRAFANA_TOKEN")
    p.add_argument("--url", help="Grafana URL (default: GRAFANA_URL)")
    p.add_argument("--folder-uid")
    p.set_defaults(func=_dashboards_push)
    p = dash.add_parser("build", help="regenerate dashboards/json from the code")
    p.set_defaults(func=_dashboards_build)
    rules = sub.add_parser("rules", help="check or list heuristic rules").add_subparsers(
        dest="rules_command", required=True)
    role = {"action": "append", "default": [], "metavar": "ROLE=KEY",
            "help": "a role of your vocabulary, as monitor.Vocabulary takes it (repeatable): "
            "--role train_loss=loss --role validation=val_loss --role mode=max; then the "
            "rules a run would load (built-in, custom) are checked against it"}
    name = {"dest": "experiment_name", "metavar": "NAME",
            "help": "the experiment's name, for rule files that say which experiments they "
            "apply to (`experiments:`); default: the experiment file's name"}
    p = rules.add_parser("check", help="validate rule files; every error with file and line; "
                         "with --role or --experiment, which rules a run would apply")
    p.add_argument("paths", nargs="+", help="rule files, directories, or 'builtin'")
    p.add_argument("--experiment", help="an experiment YAML file: its rule sources and "
                   "`signals:`; say which rules apply and warn about those that cannot fire")
    p.add_argument("--role", **role)
    p.add_argument("--experiment-name", **name)
    p.set_defaults(func=_rules_check)
    p = rules.add_parser("list", help="the effective rule set, as a run loads it: built-in "
                         "plus custom ($MONITOR_CUSTOM_RULES, else ./heuristics/custom)")
    p.add_argument("--rules", nargs="*", default=[], help="extra rule files or directories")
    p.add_argument("--experiment", help="an experiment YAML file: show the rules its "
                   "`heuristics:` list uses, and which apply to its `signals:`")
    p.add_argument("--role", **role)
    p.add_argument("--experiment-name", **name)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_rules_list)
    _rules_change_commands(rules)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
