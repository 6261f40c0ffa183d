"""Hostile input: rule files, run stores and names a user (or a broken disk) can hand us.

Every case ends in one clear line naming the file and what was expected, and a non-zero exit,
never a traceback, a hang, or text that rewrites the terminal. Rule files that pass the check
are evaluated and pickled as a run would (Ray pickles the scheduler with its rules).
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from heuristics import rules as rules_module
from heuristics.engine import RuleEngine
from heuristics.expr import MAX_DEPTH, MAX_NODES, parse
from heuristics.rules import RuleErrors, load_rules
from monitor import console as console_module
from monitor.after import report, report_page
from monitor.after.replay import print_table as print_replay
from monitor.after.replay import replay
from monitor.cli import main
from monitor.console import plain, safe
from monitor.store import RunStore, StoreError

RULE = """\
groups:
  - name: g
    rules:
      - name: r
        expr: {expr}
        for: {hold}
        labels: {{action: kill, failure: f}}
"""


def rule_file(tmp_path: Path, expr: str = "loss > 1", hold: str = "1",
              name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(RULE.format(expr=expr, hold=hold))
    return path


def check(capsys, *paths: str | Path) -> str:
    """``monitor rules check``: exit 1, and the error lines (each naming the file)."""
    assert main(["rules", "check", *map(str, paths)]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err + captured.out
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines and len(lines) == len(err.splitlines())  # every error on one line
    return err


# -- rule files ---------------------------------------------------------------------------------
def test_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):  # 10^9 nodes once expanded, a few hundred bytes
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{'' if i == 1 else i - 1}"] * 10) + "]")
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 500
    err = check(capsys, path)
    assert f"{path}:" in err and "aliases expand to more than 10000 nodes" in err


def test_a_large_file_without_aliases_is_fine(tmp_path):
    rules = "".join(f"      - name: r{i}\n        expr: loss > {i}\n"
                    f"        labels: {{action: warn, failure: f}}\n" for i in range(1500))
    path = tmp_path / "many.yaml"
    path.write_text(f"groups:\n  - name: g\n    rules:\n{rules}")
    assert len(load_rules([str(path)])) == 1500


def test_recursive_alias_is_refused(tmp_path, capsys):
    path = tmp_path / "loop.yaml"
    path.write_text("groups: &g [*g]\n")
    assert "recursive alias" in check(capsys, path)


@pytest.mark.parametrize("expr, message", [
    ("(" * 70 + "loss" + ")" * 70 + " > 1", f"nested more than {MAX_DEPTH} levels deep"),
    (" or ".join(["loss > 1"] * 300), f"nested more than {MAX_DEPTH} levels deep"),
    ("-" * 100 + "loss > 1", f"nested more than {MAX_DEPTH} levels deep"),
    ("loss > " + "1" * 3000, "a number of 3000 characters"),
    ("loss > " + "1" * 5000, "expected an expression of at most 4000"),
    ("loss > 1e999", "beyond the float range"),
    ("avg_over(loss, 99999999999999999999) > 1", "from 1 to 10000"),
])
def test_expressions_that_would_fail_later_are_refused_at_check(tmp_path, capsys, expr,
                                                                message):
    path = rule_file(tmp_path, f"'{expr}'")
    err = check(capsys, path)
    assert f"{path}:5: rule 'r': expr: " in err and message in err


@pytest.mark.parametrize("hold, message", [
    ("1" * 5000, "a number of 5000 characters; expected at most 64"),
    ("'" + "1" * 5000 + "'", "at most 32 characters"),
    ("1" * 30, "from 0 to 1000000"),
    ("9" * 20 + "h", "(a year)"),
])
def test_huge_numbers_in_for_and_grace(tmp_path, capsys, hold, message):
    path = rule_file(tmp_path, hold=hold)
    err = check(capsys, path)
    assert str(path) in err and message in err


def test_latin1_file(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(RULE.format(expr="loss > 1 # température", hold=1).encode("latin-1"))
    err = check(capsys, path)
    assert f"{path}:5: is not UTF-8 text (byte 0xE9" in err and "saved as UTF-8" in err


def test_deeply_nested_yaml(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("groups: " + "[" * 5000 + "]" * 5000 + "\n")
    err = check(capsys, path)
    assert f"{path}:1: nested more than 64 levels deep" in err


def test_non_regular_files_are_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    assert f"{fifo}: is a named pipe (FIFO); expected a YAML file" in check(capsys, fifo)
    assert "/dev/zero: is a device" in check(capsys, "/dev/zero")
    rules_dir = tmp_path / "rules"
    (rules_dir / "sub.yaml").mkdir(parents=True)  # a directory where a file is expected
    rule_file(rules_dir, name="good.yaml")
    assert f"{rules_dir / 'sub.yaml'}: is a directory" in check(capsys, rules_dir)


def test_sources_without_rules_are_errors(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: rule source '{empty}' holds no rules" in check(capsys, empty)
    none = tmp_path / "none.yaml"
    none.write_text("groups: []\n")
    assert "holds no rules" in check(capsys, none)
    monkeypatch.setattr(rules_module, "BUILTIN_DIR", empty)  # an install without the files
    assert "rule source 'builtin' holds no rules" in check(capsys, "builtin")
    # The optional drop-in directory may be empty or absent.
    monkeypatch.setattr(rules_module, "BUILTIN_DIR", Path(rules_module.__file__).parent /
                        "builtin")
    monkeypatch.delenv("MONITOR_CUSTOM_RULES", raising=False)
    monkeypatch.setattr(rules_module, "DEFAULT_CUSTOM_DIR", tmp_path / "absent")
    assert load_rules(["builtin", "custom"])


def deepest_allowed() -> str:
    """An expression at the depth and size limits: a balanced sum under a chain of windows."""
    leaves = ["max(activation_std)", 'mean(dead_ratio{layer="b*"})', 'result("loss")',
              "min_ever(loss)"] * 16

    def balanced(xs: list[str]) -> str:
        return xs[0] if len(xs) == 1 else \
            f"({balanced(xs[:len(xs) // 2])} + {balanced(xs[len(xs) // 2:])})"

    expr = balanced(leaves)  # 64 leaves, about 200 nodes, 9 levels
    for _ in range(MAX_DEPTH - 12):
        expr = f"abs({expr})"
    return f"not (avg_over({expr}, 3) > 1) or loss > 0"


def test_a_rule_that_passes_the_check_evaluates_and_pickles(tmp_path, capsys):
    expr = deepest_allowed()
    tree = parse(expr)
    nodes, stack, depth = 0, [(tree, 1)], 0
    from heuristics.expr import children
    while stack:
        n, d = stack.pop()
        nodes, depth = nodes + 1, max(depth, d)
        stack.extend((c, d + 1) for c in children(n))
    assert depth == MAX_DEPTH and MAX_NODES - 60 < nodes <= MAX_NODES
    path = rule_file(tmp_path, f"'{expr}'")
    assert main(["rules", "check", str(path)]) == 0
    [rule] = load_rules([str(path)])
    engine = RuleEngine([rule], "e")
    for i in range(1, 6):
        engine.observe("t", {"training_iteration": i, "loss": 2.0, "time_total_s": float(i),
                             "health/layers/b0/activation_std": 0.5,
                             "health/layers/b0/dead_ratio": 0.1})
    assert engine.killed("t") is not None
    copy = pickle.loads(pickle.dumps(rule))  # as Ray does with the scheduler
    assert copy.expr == expr and pickle.dumps(engine)
    one_deeper = rule_file(tmp_path, f"'abs({expr.split(' or ')[0]}) or loss > 0'",
                           name="deeper.yaml")
    assert "nested more than 32 levels deep" in check(capsys, one_deeper)


# -- run stores ---------------------------------------------------------------------------------
NAMES = {"trial_a": "killme[/x]", "trial_b": "[red]x", "trial_c": "esc\x1b[2J\x07"}
SUMMARY = "wiped \x1b[2J the screen [bold]"


def make_run(tmp_path: Path, names: dict[str, str] = NAMES) -> Path:
    """A recorded run: three trials (with hostile variant names), each killed by a rule whose
    annotation carries an escape sequence."""
    rules = tmp_path / "hostile_rules.yaml"
    rules.write_text(textwrap.dedent(f"""\
        groups:
          - name: g
            rules:
              - name: high_loss
                expr: loss > 1
                labels: {{action: kill, failure: divergence}}
                annotations: {{summary: {SUMMARY!r}}}
        """).replace("'", '"').replace("\x1b", "\\e").replace("\x07", "\\a"))
    [rule] = load_rules([str(rules)])
    assert rule.annotations["summary"] == SUMMARY
    run_dir = tmp_path / "run"
    engine = RuleEngine([rule], "e", budget=10)
    with RunStore(run_dir) as store:
        store.set_meta(experiment="e", budget=10, run="run")
        for trial, variant in names.items():
            outcome = "healthy" if variant.startswith("ok") else "divergence"
            store.upsert_trial(trial, variant=variant, budget=10, iterations=3,
                               outcome=outcome)
            for i in range(1, 4):
                result = {"training_iteration": i, "time_total_s": float(i),
                          "loss": 0.5 * i, "health/layers/enc/dead_ratio": 0.1}
                store.add_result(trial, result)
                for v in engine.observe(trial, result, wall_time=0.0):
                    store.add_verdict(v.to_dict())
    return run_dir


@pytest.fixture
def wide(monkeypatch):
    """A wide console, so that names are not folded across lines."""
    monkeypatch.setattr(console_module.console, "size", (400, 50))


def test_names_print_verbatim_in_the_kill_report(tmp_path, capsys, wide):
    run_dir = make_run(tmp_path)
    assert main(["kill-report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "killme[/x]" in out and "[red]x" in out and "esc\\x1b[2J\\x07" in out
    assert "\x1b" not in out and "\x07" not in out
    for fmt in ("markdown", "json"):
        assert main(["kill-report", str(run_dir), "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert "killme[/x]" in out and "\x1b" not in out and "\x07" not in out
    data = report.build(run_dir)
    assert all(SUMMARY.rstrip() in k["reason"] for k in data["kills"])  # kept in the data
    page = report_page.render(data, run_dir)
    assert "\x1b" not in page and "killme[/x]" in page


def test_names_print_verbatim_in_the_replay_command(tmp_path, capsys, wide):
    run_dir = make_run(tmp_path)
    assert main(["replay", str(run_dir), "--rules", str(tmp_path / "hostile_rules.yaml")]) == 0
    out = capsys.readouterr().out
    assert "killme[/x]" in out and "[red]x" in out and "\x1b" not in out


def test_names_print_verbatim_in_the_replay_table(tmp_path, capsys, wide):
    run_dir = make_run(tmp_path)
    result = replay([run_dir], load_rules([str(tmp_path / "hostile_rules.yaml")]))
    print_replay(result, console_module.console)
    out = capsys.readouterr().out
    assert "killme[/x]" in out and "[red]x" in out and "esc\\x1b[2J\\x07" in out
    assert "\x1b" not in out and "\x07" not in out


def test_safe_and_plain():
    assert safe("killme[/x]") == "killme\\[/x]"
    assert plain("a\x1b[2Jb\r\n\u202e") == "a\\x1b[2Jb\\r\\n\\u202e"
    console_module.print_error("bad \x1b[31m name [red]x")  # no markup error, no raw escape


def corrupt_random(run_dir: Path) -> None:
    (run_dir / "monitor.sqlite").write_bytes(os.urandom(64 * 1024))


def corrupt_truncated(run_dir: Path) -> None:
    path = run_dir / "monitor.sqlite"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])


def corrupt_pages(run_dir: Path) -> None:
    path = run_dir / "monitor.sqlite"
    data = bytearray(path.read_bytes())
    for start in range(100, len(data), len(data) // 5):  # damaged pages after a valid header
        data[start:start + 2048] = os.urandom(2048)[:len(data) - start]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [corrupt_random, corrupt_truncated, corrupt_pages])
@pytest.mark.parametrize("command", ["kill-report", "replay", "calibrate", "kill-report-html"])
def test_damaged_stores_end_in_one_line(tmp_path, capsys, damage, command):
    run_dir = make_run(tmp_path, {"trial_a": "a", "trial_b": "b", "trial_c": "ok_c",
                                  "trial_d": "ok_d"})
    # A store with more pages than the page cache, so that damage is met while reading.
    with RunStore(run_dir) as store:
        for i in range(1, 400):
            store.add_result("trial_a", {"training_iteration": 100 + i, "time_total_s": 1.0,
                                         **{f"health/layers/l{j}/dead_ratio": 0.1
                                            for j in range(50)}})
    damage(run_dir)
    capsys.readouterr()
    argv = {"kill-report": ["kill-report", str(run_dir)],
            "kill-report-html": ["kill-report", str(run_dir), "--html",
                                 str(tmp_path / "r.html")],
            "replay": ["replay", str(run_dir), "--rules", str(tmp_path / "hostile_rules.yaml")],
            "calibrate": ["calibrate", str(run_dir), "--output", str(tmp_path / "c.yaml")]}
    try:
        code = main(argv[command])
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    if code == 0:  # damage the command did not need to read (the page of another table)
        pytest.skip("the damage was not met by this command")
    assert "Traceback" not in captured.err + captured.out
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert "monitor.sqlite" in errors[0] or str(run_dir) in errors[0]


def test_damaged_store_is_a_store_error_when_read(tmp_path):
    run_dir = make_run(tmp_path)
    corrupt_random(run_dir)
    for read in (report.build, lambda d: replay([d], [])):
        with pytest.raises(StoreError, match="monitor.sqlite: damaged or not a run store"):
            read(run_dir)


def test_a_fifo_or_a_directory_as_the_store(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.mkfifo(run_dir / "monitor.sqlite")
    with pytest.raises(StoreError, match="not a regular file"):
        report.build(run_dir)
    (run_dir / "monitor.sqlite").unlink()
    (run_dir / "monitor.sqlite").mkdir()
    with pytest.raises(StoreError, match="not a regular file"):
        report.build(run_dir)


def _chattr(flag: str, *paths: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    proc = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True)
    return proc.returncode == 0


def test_a_read_only_store_is_read_not_reported_as_damaged(tmp_path, capsys, wide):
    run_dir = make_run(tmp_path)
    store = run_dir / "monitor.sqlite"
    if os.geteuid() == 0:  # root ignores permissions: make the files immutable instead
        if not _chattr("+i", store, run_dir):
            pytest.skip("chattr +i is not available here")
    else:
        store.chmod(0o444)
        run_dir.chmod(0o555)
    try:
        with pytest.raises(StoreError):  # a writer cannot open it...
            RunStore(run_dir, create=False).add_verdict({"trial": "x"})
        capsys.readouterr()
        assert main(["kill-report", str(run_dir)]) == 0  # ...reports can
        assert "killme[/x]" in capsys.readouterr().out
        assert report.build(run_dir)["killed"] == 3
        assert replay([run_dir], load_rules([str(tmp_path / "hostile_rules.yaml")]))["trials"]
    finally:
        if os.geteuid() == 0:
            _chattr("-i", store, run_dir)
        else:
            run_dir.chmod(0o755)
            store.chmod(0o644)
    assert sorted(p.name for p in run_dir.iterdir()) == ["monitor.sqlite"]  # nothing written


def test_html_into_a_missing_directory(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "r.html"
    with pytest.raises(report.ReportError, match=r"directory .*dir does not exist"):
        report.write_html(target, "<html></html>")
    assert isinstance(report.ReportError("x"), StoreError)  # caught where StoreError is


@pytest.mark.parametrize("command", ["kill-report", "calibrate"])
def test_output_into_a_missing_directory_is_one_line(tmp_path, capsys, command):
    run_dir = make_run(tmp_path, {"trial_a": "a", "trial_b": "b", "trial_c": "ok_c",
                                  "trial_d": "ok_d"})
    target = tmp_path / "missing" / "out"
    argv = (["kill-report", str(run_dir), "--html", str(target)] if command == "kill-report"
            else ["calibrate", str(run_dir), "--output", str(target)])
    capsys.readouterr()
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(target) in err and "does not exist" in err


def test_rule_errors_are_one_line_each(tmp_path):
    path = rule_file(tmp_path, "'loss >\n > 1'")
    with pytest.raises(RuleErrors) as info:
        load_rules([str(path)])
    assert all("\n" not in str(e) for e in info.value.errors)


def test_a_password_in_grafana_url_is_never_printed(capsys):
    from monitor.cli import main

    code = main(["dashboards", "push", "--url", "http://admin:s3cret@127.0.0.1:9/"])
    err = capsys.readouterr().err
    assert code != 0 and "s3cret" not in err and "***@127.0.0.1:9" in err
