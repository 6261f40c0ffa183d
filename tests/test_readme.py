"""The README's Python blocks (all in "Monitor your own training"), run verbatim in a fresh
directory; the pages under docs/ hold none (their blocks are shell, YAML or text)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Monitor your own training"


def readme_blocks() -> list[str]:
    """The python blocks of the README section, in order."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


def run_block(code: str, cwd: Path, python: str = sys.executable) -> str:
    """Run ``code`` as a script in ``cwd``; return its output (fails on a non-zero exit)."""
    script = cwd / "example.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k not in ("MONITOR_RUNS_DIR", "PYTHONPATH")}
    env.update(COLUMNS="100", RAY_memory_monitor_refresh_ms="0", MONITOR_EXPORTER_PORT="0")
    proc = subprocess.run([python, str(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def check_run(cwd: Path, experiment: str) -> dict:
    """The one run the example wrote: a healthy trial done, the absurd one killed."""
    runs = list((cwd / "runs").glob(f"{experiment}_*/summary.json"))
    assert len(runs) == 1, runs
    summary = json.loads(runs[0].read_text())
    statuses = sorted(t["status"] for t in summary["trials"])
    assert statuses == ["KILLED", "TERMINATED"], summary["trials"]
    killed = next(t for t in summary["trials"] if t["status"] == "KILLED")
    healthy = next(t for t in summary["trials"] if t["status"] == "TERMINATED")
    assert killed["killed"]["rule"] == "divergence"
    assert "stopped at iteration" in killed["killed"]["reason"]
    assert healthy["iterations"] == 12 and healthy["metric"] < 0.2
    return summary


def test_readme_has_the_examples_and_every_python_block_is_run():
    blocks = readme_blocks()
    assert len(blocks) == 3
    assert "TuneMonitor" in blocks[0] and "LoopMonitor" in blocks[1]
    assert "nn.ModuleDict" in blocks[2]
    fence = re.compile(r"^```\s*(python|py|python3|pycon)\b", re.M)
    assert len(fence.findall(README.read_text())) == len(blocks)  # none outside the section
    pages = sorted((README.parent / "docs").glob("**/*.md"))
    assert pages and not [p.name for p in pages if fence.search(p.read_text())]
    for page in pages:  # the README links them, and they exist
        assert f"docs/{page.relative_to(README.parent / 'docs')}" in README.read_text()


@pytest.mark.slow
def test_readme_gan_example(tmp_path):
    out = run_block(readme_blocks()[2], tmp_path)
    assert "['discriminator.1', 'generator.1']" in out  # both networks, one monitor
    (summary,) = [json.loads(p.read_text())
                  for p in (tmp_path / "runs").glob("toy_gan_*/summary.json")]
    assert [t["status"] for t in summary["trials"]] == ["TERMINATED"]
    assert "learning_undone (no train_loss declared)" in summary["rules"]
    assert not any("is declared, but" in n for n in summary["notices"])


@pytest.mark.slow
def test_readme_plain_loop_example(tmp_path):
    out = run_block(readme_blocks()[1], tmp_path)
    assert "Trial absurd_lr stopped at iteration" in out and "by rule divergence" in out
    summary = check_run(tmp_path, "mlp_loop")
    assert "GAN rules discriminator_overpowering, generator_outpaced" in summary["rules"]
    assert not any("cannot fire" in n for n in summary["notices"])  # one line, not warnings
    assert out.startswith("Health metrics of mlp_loop_")  # said at the first report
    from monitor.cli import main

    assert main(["kill-report", summary["storage"], "--format", "json"]) == 0


@pytest.mark.slow
def test_readme_tune_example(tmp_path):
    out = run_block(readme_blocks()[0], tmp_path)
    assert "killed: divergence @1" in out
    summary = check_run(tmp_path, "mlp_sweep")
    killed = next(t for t in summary["trials"] if t.get("killed"))
    assert killed["last"]["monitor_killed"] == "divergence"  # in Tune's own results too
    assert killed["last"]["monitor_reason"] == killed["killed"]["reason"]
