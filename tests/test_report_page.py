"""The kill report people look at: the HTML page in a real browser, audio clips, piped output.

The browser test renders the page of a real ``early_kill_smoke`` run (two trials killed, one
healthy, with the master trainer's audio clips) in headless Chromium (Debian ``chromium``;
``.ci/run`` installs it), checks the table, plots and audio elements, that the table sorts,
that the page logs no error and asks for nothing outside itself, and keeps a screenshot:
``<pytest tmp dir>/kill-report.png`` and ``build/artefacts/kill-report.png``.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import monitor
from monitor.cli import main
from monitor.training import audio_samples
from monitor.training.audio_samples import AUDIO_KEY, REFERENCE_KEY
from tests.browser import Browser, find_chromium

ROOT = Path(__file__).resolve().parents[1]
AUDIO_PROMISE = """Promise.all([...document.querySelectorAll('audio')].map(a =>
  new Promise(done => { a.onloadedmetadata = () => done(a.duration);
                        a.onerror = () => done(-1); a.preload = 'auto'; a.load(); })))"""


def test_audio_clips_are_kept_bounded_and_bad_ones_named(tmp_path):
    keeper = audio_samples.AudioKeeper(max_seconds=0.25)
    tone = np.sin(np.linspace(0, 2000, 16000)) * 2.0  # beyond full scale: clipped
    tone[5] = np.nan
    first = keeper.clip(tone, 16000, reference=tone)
    assert set(first) == {AUDIO_KEY, REFERENCE_KEY}
    assert set(keeper.clip(torch.tensor(tone), 16000)) == {AUDIO_KEY}  # reference sent once
    for i in range(1, 101):
        result = {"loss": 1.0, **keeper.clip(tone, 16000)}
        assert audio_samples.keep(tmp_path, "t/1", i, result) == []
        assert AUDIO_KEY not in result  # nothing after the writer carries the clip
    held = audio_samples.clips(tmp_path, "t/1")
    assert len(held) <= audio_samples.MAX_CLIPS + 1 and 100 in held
    assert set(held) == {i for i in range(4, 101, 4)} | {100}  # spacing doubled twice
    samples, rate = audio_samples.read_wav(held[100])
    assert rate == 16000 and len(samples) == 4000 and samples[5] == 0
    assert np.abs(samples).max() == pytest.approx(1.0)
    bad = {AUDIO_KEY: "not audio"}
    [problem] = audio_samples.keep(tmp_path, "t/1", 101, bad)
    assert "monitor_audio of trial t/1 at iteration 101" in problem and not bad
    with pytest.raises(ValueError, match="one channel"):
        keeper.clip(np.zeros((2, 100)), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        keeper.clip(tone, 16000.0)


def test_a_plain_loop_keeps_audio_beside_its_store(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh())
    health = monitor.attach(model)
    run = monitor.LoopMonitor("audio_loop", budget=3, storage=tmp_path)
    for _ in range(3):
        health.step()
        out = model(torch.randn(1, 64)).flatten().repeat(40)
        run.report({"loss": 1.0, **health.keep_audio(out, 8000, reference=out)}, health=health)
    health.close()
    run.close()
    assert sorted(audio_samples.clips(run.run_dir, "main")) == [1, 2, 3]
    assert audio_samples.reference(run.run_dir, "main") is not None
    with wave.open(str(audio_samples.clips(run.run_dir, "main")[3])) as w:
        assert (w.getframerate(), w.getnframes()) == (8000, 2560)


def _data_uri_text(page: str, css_class: str) -> str:
    uri = re.search(rf"class='plot {css_class}'[^>]* src='data:image/svg\+xml;base64,([^']+)'",
                    page).group(1)
    return base64.b64decode(uri).decode()


@pytest.mark.slow
def test_kill_report_page_in_a_real_browser(early_kill_run, tmp_path):
    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs the Debian package chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    _, run_dir = early_kill_run
    page_path = tmp_path / "report.html"
    assert main(["kill-report", str(run_dir), "--format", "json", "--html", str(page_path),
                 "--baseline", "healthy"]) == 0
    page = page_path.read_text()
    assert not re.search(r"""(src|href)=['"]?(https?:|//)""", page)  # nothing from outside
    evidence = _data_uri_text(page, "evidence")  # the layers are named, the siblings drawn
    assert "encoder_act" in evidence and "healthy siblings" in evidence
    with Browser() as browser:
        browser.open(page_path.as_uri())
        rows = browser.eval("[...document.querySelectorAll('#trials tbody tr')].map(r => "
                            "[r.cells[1].textContent, r.cells[2].textContent])")
        assert sorted(rows) == [["dead_relu_bias_init", "KILLED"], ["divergence", "KILLED"],
                                ["healthy", "TERMINATED"]]
        # sorting by the final metric: the healthy trial first, no value (NaN) last
        browser.eval("document.querySelector('#trials th:nth-child(7)').click()")
        order = browser.eval("[...document.querySelectorAll('#trials tbody tr')]"
                             ".map(r => r.cells[1].textContent)")
        assert order == ["healthy", "dead_relu_bias_init", "divergence"]
        plots = browser.eval("Object.fromEntries(['metric', 'evidence', 'comparison'].map(c => "
                             "[c, [...document.querySelectorAll('img.plot.' + c)]"
                             ".map(i => i.complete && i.naturalWidth > 100)]))")
        assert plots["metric"] == [True]
        assert len(plots["evidence"]) >= 3 and all(plots["evidence"])
        assert plots["comparison"] == [True, True]  # each other trial against the baseline
        assert browser.eval("[...document.querySelectorAll('section.kill')].map(s => "
                            "s.querySelectorAll('audio').length)") == [3, 3]
        durations = browser.eval(AUDIO_PROMISE)  # every clip decodes and plays 0.5 s
        assert len(durations) >= 6 and all(d == pytest.approx(0.5, abs=0.01)
                                           for d in durations)
        assert browser.eval("document.querySelectorAll('img.spectrogram').length") == \
            len(durations)
        assert browser.errors() == []
        browser.eval("console.error('probe')")  # the error check sees errors
        assert browser.errors() == ["probe"]
        shot = browser.screenshot(tmp_path / "kill-report.png")
    assert shot.stat().st_size > 50_000
    artefacts = ROOT / "build" / "artefacts"
    artefacts.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, artefacts / "kill-report.png")


@pytest.mark.slow
def test_piped_kill_report_keeps_whole_rows(early_kill_run):
    _, run_dir = early_kill_run
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-m", "monitor.cli", "kill-report", str(run_dir)],
                         capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    [row] = [line for line in out.splitlines() if "dead_relu_bias_init" in line
             and "dead_relu_collapse" in line and "evidence" not in line and "it 2/6" in line]
    assert "dead_ratio=1 (encoder_act)" in row  # the evidence on the row, not folded
    assert max(map(len, out.splitlines())) > 80
    assert main(["kill-report", str(run_dir), "--baseline", "nobody"]) == 2


def test_names_from_the_run_are_drawn_verbatim():
    from monitor.after import report_plots

    hostile = ["_hidden", "cost $5 a $b$", "esc\x1b[2J"]
    uri = report_plots.metric_over_time("val", {n: {"points": [(1, 1.0), (2, 0.5)]}
                                                for n in hostile})
    svg = base64.b64decode(uri.split(",", 1)[1]).decode()
    assert "_hidden" in svg and "cost $5 a $b$" in svg and "esc\\x1b[2J" in svg


def test_stopped_trials_are_compared_first_then_the_best():
    from monitor.after.report_page import _compared_first

    rows = [{"trial": t, "status": s, "final_metric": m} for t, s, m in (
        ("a", "TERMINATED", 2.0), ("b", "KILLED", None), ("c", "TERMINATED", 1.0),
        ("d", "STOPPED", 5.0), ("e", "TERMINATED", float("nan")))]
    assert [r["trial"] for r in _compared_first(rows, "min")] == ["d", "b", "c", "a", "e"]
    assert [r["trial"] for r in _compared_first(rows, "max")] == ["d", "b", "a", "c", "e"]
