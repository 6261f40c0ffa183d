"""The built wheel works outside this checkout.

Builds the sdist and, from it, the wheel (as a user's ``python -m build`` would), installs the
wheel into a fresh virtual environment outside the checkout with the tested versions
(``-c constraints.txt``), and runs it from an empty directory with ``PYTHONPATH`` unset: the
built-in rules list and check, the dashboards are found through the installed package, runs
go to ``./runs`` of the current directory, and the README's "Monitor your own training"
examples (Tune and plain loop) kill the broken trial and let the healthy one finish.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.test_readme import check_run, readme_blocks

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Environment that would let the checkout (or a developer's settings) leak into the wheel's run.
LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "MONITOR_RUNS_DIR",
             "MONITOR_CUSTOM_RULES")


def builtin_rule_names() -> set[str]:
    names = set()
    for path in sorted((ROOT / "heuristics" / "builtin").glob("*.yaml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(rule["name"] for rule in group["rules"])
    return names


def copy_sources(dest: Path) -> Path:
    """The checkout's files as git sees them (tracked and new, not ignored), copied to ``dest``:
    the build never writes into the shared checkout, and no stale ``build/`` leaks in."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
            capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: copy minus outputs
        ignore = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "__pycache__",
                                        "*.egg-info", ".*_cache")
        shutil.copytree(ROOT, dest, ignore=ignore)
        return dest
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def run(cmd: list[str | Path], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    assert proc.returncode == 0, (f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                                  f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@dataclass
class WheelEnv:
    """A fresh venv outside the checkout with the wheel installed; runs things in clean dirs."""

    root: Path
    work: Path  # parent of the clean working directories

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("RAY_memory_monitor_refresh_ms", "0")
        return {**env, **extra}

    def clean_dir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True)
        return path

    def run(self, *args: str | Path, cwd: Path, timeout: float = 300,
            **env: str) -> subprocess.CompletedProcess:
        return run(list(args), timeout, cwd=cwd, env=self.env(**env))

    def monitor(self, *args: str, cwd: Path) -> str:
        return self.run(self.bin / "monitor", *args, cwd=cwd, COLUMNS="200").stdout

    def run_python(self, source: str | Path, name: str = "example", timeout: float = 900,
                   **env: str) -> tuple[str, Path]:
        """Run a Python file, or Python source text, with the wheel's interpreter in a fresh
        directory outside the checkout (``PYTHONPATH`` unset); assert it exits 0. Returns its
        stdout (then stderr) and the directory it ran in."""
        cwd = self.clean_dir(name)
        script = cwd / f"snippet_{name}.py"  # a name no package shadows
        text = source.read_text() if isinstance(source, Path) else textwrap.dedent(source)
        script.write_text(text)
        proc = self.run(self.python, script, cwd=cwd, timeout=timeout, **env)
        return proc.stdout + proc.stderr, cwd


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("wheel-build")
    assert not base.resolve().is_relative_to(ROOT)
    src = copy_sources(base / "src")
    run([sys.executable, "-m", "build", "--outdir", base / "dist", src], 600)
    (found,) = (base / "dist").glob("*.whl")
    return found


@pytest.fixture(scope="module")
def wheel_env(wheel, tmp_path_factory) -> WheelEnv:
    base = tmp_path_factory.mktemp("wheel-venv")
    assert not base.resolve().is_relative_to(ROOT)
    venv.create(base / "venv", with_pip=False, symlinks=True)
    # This pip installs into the fresh venv (--python); --no-compile skips byte-compiling all of
    # torch and Ray up front (modules compile on first import instead).
    run([sys.executable, "-m", "pip", "--python", base / "venv" / "bin" / "python", "install",
         "-q", "--no-compile", "-c", ROOT / "constraints.txt", wheel], 1800)
    return WheelEnv(base / "venv", base / "work")


def test_wheel_holds_the_data_and_only_the_library(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    builtin = {f"heuristics/builtin/{p.name}" for p in (ROOT / "heuristics/builtin").glob("*")}
    dashboards = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dashboards").rglob("*")
                  if p.is_file() and p.suffix in (".json", ".yaml")}
    assert builtin and builtin <= names
    assert {"dashboards/json/overview.json", "dashboards/json/trial.json",
            "dashboards/provisioning/datasources/tune-health.yaml",
            "dashboards/provisioning/dashboards/tune-health.yaml"} <= dashboards <= names
    assert "heuristics/custom/README.md" in names
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"monitor", "heuristics", "dashboards"}  # no trainers, bench or tests


def test_wheel_requirements_are_ranges_that_admit_other_minors(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    core = {r.name.lower().replace("_", "-"): r for r in reqs if r.marker is None}
    assert not [str(r) for r in core.values() if any(s.operator in ("==", "===")
                                                     for s in r.specifier)]
    for name, versions in {"torch": ("2.13.0", "2.14.1", "2.1.0"),
                           "ray": ("2.60.0", "2.61.0")}.items():
        for version in versions:
            assert core[name].specifier.contains(version), (name, version, core[name])
    assert not core["torch"].specifier.contains("3.0.0")
    assert "tune" in core["ray"].extras
    # The dashboard-building SDK comes only with an extra (and dev), never with every install.
    sdk = [r for r in reqs if r.name.lower().replace("_", "-") == "grafana-foundation-sdk"]
    assert "grafana-foundation-sdk" not in core
    assert sdk and all("extra" in str(r.marker) for r in sdk)


def test_the_checkout_is_not_importable_and_runs_go_to_the_current_directory(wheel_env):
    probe = """
        import importlib.util, json, sys
        import heuristics, monitor, dashboards
        from monitor.paths import runs_dir
        print(json.dumps({"path": sys.path, "prefix": sys.prefix, "runs": str(runs_dir()),
                          "files": [m.__file__ for m in (monitor, heuristics, dashboards)],
                          "others": [n for n in ("trainers", "bench")
                                     if importlib.util.find_spec(n)]}))
    """
    out, cwd = wheel_env.run_python(probe, "probe")
    found = json.loads(out)
    assert Path(found["prefix"]).resolve() == wheel_env.root.resolve()
    assert not [p for p in found["path"] if p and Path(p).resolve().is_relative_to(ROOT)]
    site = wheel_env.root.resolve()
    assert all(Path(f).resolve().is_relative_to(site) for f in found["files"]), found["files"]
    assert found["others"] == []
    assert Path(found["runs"]) == cwd.resolve() / "runs"
    elsewhere = wheel_env.work / "elsewhere"
    out, _ = wheel_env.run_python(probe, "probe_env", MONITOR_RUNS_DIR=str(elsewhere))
    assert Path(json.loads(out)["runs"]) == elsewhere


def test_builtin_rules_list_and_check_from_the_wheel(wheel_env):
    cwd = wheel_env.clean_dir("rules")
    names = builtin_rule_names()
    table = wheel_env.monitor("rules", "list", cwd=cwd)
    assert all(name in table for name in names), table
    listed = json.loads(wheel_env.monitor("rules", "list", "--format", "json", cwd=cwd))
    assert {r["name"] for r in listed} == names
    assert all(Path(r["source"].rsplit(":", 1)[0]).resolve().is_relative_to(
        wheel_env.root.resolve()) for r in listed)
    assert f"OK: {len(names)} rules" in wheel_env.monitor("rules", "check", "builtin", cwd=cwd)


def test_dashboards_and_provisioning_come_with_the_package(wheel_env):
    out, _ = wheel_env.run_python("""
        import json
        import dashboards
        from monitor.serving.grafana import load_dashboards
        prov = dashboards.provisioning_dir()
        print(json.dumps({"json": [str(p) for p in dashboards.dashboard_files()],
                          "uids": [m["uid"] for m in load_dashboards()],
                          "provisioning": sorted(str(p.relative_to(prov))
                                                 for p in prov.rglob("*.yaml"))}))
    """, "dashboards")
    found = json.loads(out)
    expected = sorted(p.name for p in (ROOT / "dashboards" / "json").glob("*.json"))
    assert [Path(p).name for p in found["json"]] == expected
    assert all(Path(p).resolve().is_relative_to(wheel_env.root.resolve()) for p in found["json"])
    assert len(found["uids"]) == len(expected) and all(found["uids"])
    assert found["provisioning"] == ["dashboards/tune-health.yaml",
                                     "datasources/tune-health.yaml"]


@pytest.mark.parametrize("block, experiment", [(0, "mlp_sweep"), (1, "mlp_loop")],
                         ids=["tune", "plain_loop"])
def test_the_readme_examples_run_from_the_wheel(wheel_env, block, experiment):
    out, cwd = wheel_env.run_python(readme_blocks()[block], f"readme_{experiment}",
                                    COLUMNS="100", MONITOR_EXPORTER_PORT="0")
    summary = check_run(cwd, experiment)  # in ./runs: the healthy trial done, the broken killed
    assert Path(summary["storage"]).resolve().is_relative_to(cwd.resolve() / "runs")
    assert ("killed: divergence @1" in out if block == 0
            else "Trial absurd_lr stopped at iteration" in out), out[-3000:]
    report = json.loads(wheel_env.monitor("kill-report", "--format", "json", cwd=cwd))
    assert report, "monitor kill-report found no run under ./runs"


def test_runs_dir_is_the_environment_or_runs_of_the_current_directory(tmp_path, monkeypatch):
    from monitor.paths import runs_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MONITOR_RUNS_DIR", raising=False)
    assert runs_dir() == tmp_path.resolve() / "runs"
    monkeypatch.setenv("MONITOR_RUNS_DIR", "elsewhere/runs")
    assert runs_dir() == tmp_path.resolve() / "elsewhere" / "runs"
    monkeypatch.setenv("MONITOR_RUNS_DIR", str(tmp_path / "abs"))
    assert runs_dir() == tmp_path / "abs"


def test_pushing_from_a_directory_without_dashboards_is_an_error(tmp_path):
    from monitor.serving.grafana import GrafanaError, load_dashboards

    with pytest.raises(GrafanaError, match="no dashboard JSON files"):
        load_dashboards(tmp_path)
    (tmp_path / "broken.json").write_text("{\n  'uid': 1\n}")
    with pytest.raises(GrafanaError, match=r"broken\.json:2: not valid JSON"):
        load_dashboards(tmp_path)
