"""Prometheus exporter: a ``Collector`` over a snapshot of every running trial's signals.

Metric names share the ``tune_health_`` prefix and carry the signal in the name; labels are
``experiment``, ``trial``, ``role`` and (per-layer signals) ``layer``. Series of a trial that
ended stay ``retain_s`` seconds (so the last values get scraped) and are then dropped.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from heuristics.results import unflatten_health

PREFIX = "tune_health"
LAYER_METRICS = {  # signal -> (metric name, help)
    "dead_ratio": ("dead_ratio", "Fraction of units never positive in the window"),
    "evergreen_ratio": ("evergreen_ratio", "Fraction of units always positive in the window"),
    "healthy_ratio": ("healthy_ratio", "Fraction of units whose activity varies with the input"),
    "activation_std": ("activation_std", "Per-unit activation std over batch and time, "
                       "averaged over units"),
    "activation_mean": ("activation_mean", "Mean activation over the window"),
    "nonfinite_count": ("nonfinite_activations", "Non-finite activation values in the window"),
}
MODEL_METRICS = {
    "output_power_db": ("output_power_db", "Mean spectral power of the model output (dB)"),
    "target_power_db": ("target_power_db", "Mean spectral power of the target (dB)"),
    "power_loss": ("power_loss", "Parallel WaveNet power loss (squared distance of "
                   "time-averaged |STFT|^2)"),
    "power_ratio_db": ("power_ratio_db", "Output over target spectral power (dB)"),
}
SCALAR_METRICS = {  # top-level result key -> (metric name, help)
    "grad_norm": ("gradient_norm", "Gradient norm before clipping, mean over the iteration"),
    "training_iteration": ("training_iteration", "Last reported training iteration"),
    "step_time_s": ("step_seconds", "Wall time per training step"),
    "n_parameters": ("parameters", "Parameters of the trained model"),
    "rtf": ("real_time_factor", "CPU seconds per second of audio"),
}


@dataclass
class TrialSignals:
    experiment: str
    trial: str
    role: str
    iteration: int = 0
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    model: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    reports: int = 0
    updated: float = 0.0
    ended: float | None = None


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


class SignalSnapshot:
    """Thread-safe latest signals per trial, written by the driver, read by scrapes."""

    def __init__(self, retain_s: float = 30.0) -> None:
        self.retain_s = retain_s
        self._trials: dict[str, TrialSignals] = {}
        self._kills: dict[tuple[str, str, str], int] = {}
        self._warnings: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()
        self.changed = time.time()  # the last change of anything a scrape shows
        self.scraped: float | None = None  # when the last scrape began (None: never scraped)

    def mark_scraped(self) -> None:
        self.scraped = time.time()

    def final_state_scraped(self) -> bool:
        """True when nobody scrapes, or a scrape began after the last change."""
        return self.scraped is None or self.scraped > self.changed

    def update(self, experiment: str, trial: str, result: dict[str, Any]) -> None:
        """Record one Tune result (the trainables' metrics with their ``health`` block)."""
        health = unflatten_health(result)
        t = TrialSignals(experiment, trial, str(result.get("role", "unknown")))
        t.iteration = int(result.get("training_iteration", 0))
        t.layers = {layer: {k: float(v) for k, v in sig.items() if _number(v) is not None}
                    for layer, sig in (health.get("layers") or {}).items()}
        t.model = {k: float(v) for k, v in (health.get("model") or {}).items()
                   if _number(v) is not None}
        for key, value in result.items():
            v = _number(value)
            if v is None:
                continue
            if key.startswith("health/"):
                continue
            if key.startswith("loss"):
                t.losses[key[5:] or "total"] = v
            elif key.startswith("val_") or key.startswith("master_val_"):
                t.validation[key] = v
            elif key in SCALAR_METRICS:
                t.scalars[key] = v
        t.updated = time.time()
        with self._lock:
            previous = self._trials.get(trial)
            t.reports = (previous.reports if previous else 0) + 1
            self._trials[trial] = t
            self.changed = time.time()

    def end(self, trial: str) -> None:
        """Mark a trial as ended; its series go ``retain_s`` seconds later."""
        with self._lock:
            if trial in self._trials:
                self._trials[trial].ended = time.time()
            self.changed = time.time()

    def declare(self, experiment: str, kills: list[tuple[str, str]],
                warnings: list[tuple[str, str]]) -> None:
        """Create the counters of every (rule, failure) at 0, so that their first increment is
        a change Prometheus can see (``changes()``, ``increase()``)."""
        with self._lock:
            for rule, failure in kills:
                self._kills.setdefault((experiment, rule, failure), 0)
            for rule, failure in warnings:
                self._warnings.setdefault((experiment, rule, failure), 0)

    def _count(self, table: dict[tuple[str, str, str], int], experiment: str, rule: str,
               failure: str) -> None:
        with self._lock:
            key = (experiment, rule, failure)
            table[key] = table.get(key, 0) + 1
            self.changed = time.time()

    def count_kill(self, experiment: str, rule: str, failure: str) -> None:
        self._count(self._kills, experiment, rule, failure)

    def count_warning(self, experiment: str, rule: str, failure: str) -> None:
        self._count(self._warnings, experiment, rule, failure)

    def trials(self) -> list[TrialSignals]:
        """Live trials (ended ones past their retention are dropped here)."""
        now = time.time()
        with self._lock:
            for tid in [k for k, t in self._trials.items()
                        if t.ended is not None and now - t.ended > self.retain_s]:
                del self._trials[tid]
            return list(self._trials.values())

    def kills(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._kills)

    def warnings(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._warnings)


class HealthCollector(Collector):
    """Yields metric families from a ``SignalSnapshot`` at every scrape."""

    def __init__(self, snapshot: SignalSnapshot, prefix: str = PREFIX) -> None:
        self.snapshot = snapshot
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        self.snapshot.mark_scraped()
        trials = self.snapshot.trials()
        base = ["experiment", "trial", "role"]

        def gauge(name: str, doc: str, extra: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{self.prefix}_{name}", doc, labels=base + extra)

        for signal, (name, doc) in LAYER_METRICS.items():
            family = gauge(name, doc, ["layer"])
            for t in trials:
                for layer, values in t.layers.items():
                    if signal in values:
                        family.add_metric([t.experiment, t.trial, t.role, layer], values[signal])
            yield family
        def per_trial(table: dict[str, tuple[str, str]], values_of) -> Iterator[Metric]:
            for key, (name, doc) in table.items():
                family = gauge(name, doc, [])
                for t in trials:
                    if key in values_of(t):
                        family.add_metric([t.experiment, t.trial, t.role], values_of(t)[key])
                yield family

        yield from per_trial(MODEL_METRICS, lambda t: t.model)
        losses = gauge("loss", "Training losses, mean over the iteration", ["loss"])
        validation = gauge("validation", "Validation metrics (lower is better)", ["metric"])
        info = gauge("trial_info", "Trials being monitored (value 1)", [])
        for t in trials:
            for k, v in t.losses.items():
                losses.add_metric([t.experiment, t.trial, t.role, k], v)
            for k, v in t.validation.items():
                validation.add_metric([t.experiment, t.trial, t.role, k], v)
            info.add_metric([t.experiment, t.trial, t.role], 1.0)
        yield losses
        yield validation
        yield info
        yield from per_trial(SCALAR_METRICS, lambda t: t.scalars)
        reports = CounterMetricFamily(f"{self.prefix}_reports", "Results received per trial",
                                      labels=base)
        updated = gauge("last_report_timestamp_seconds", "Unix time of the last result", [])
        for t in trials:
            reports.add_metric([t.experiment, t.trial, t.role], t.reports)
            updated.add_metric([t.experiment, t.trial, t.role], t.updated)
        yield reports
        yield updated
        kills = CounterMetricFamily(f"{self.prefix}_kills", "Trials stopped by a heuristic rule",
                                    labels=["experiment", "rule", "failure"])
        for (experiment, rule, failure), n in self.snapshot.kills().items():
            kills.add_metric([experiment, rule, failure], n)
        yield kills
        warnings = CounterMetricFamily(f"{self.prefix}_warnings", "Warnings raised by heuristic "
                                       "rules", labels=["experiment", "rule", "failure"])
        for (experiment, rule, failure), n in self.snapshot.warnings().items():
            warnings.add_metric([experiment, rule, failure], n)
        yield warnings


class ExporterError(RuntimeError):
    pass


ACTIVE: dict[str, Exporter] = {}  # run name -> the exporter serving it in this process


class Exporter:
    """Serves ``/metrics`` for one experiment and announces itself in a file_sd file."""

    def __init__(self, experiment: str, run: str, host: str = "127.0.0.1", port: int = 0,
                 sd_dir: str | Path | None = None, retain_s: float = 30.0) -> None:
        self.experiment, self.run = experiment, run
        self.host, self.port = host, port
        self.sd_dir = Path(sd_dir) if sd_dir else None
        self.snapshot = SignalSnapshot(retain_s)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HealthCollector(self.snapshot))
        self._server = self._thread = None

    @classmethod
    def for_run(cls, run: str) -> Exporter | None:
        """The exporter serving ``run`` in this process, if any."""
        return ACTIVE.get(run)

    @property
    def sd_file(self) -> Path | None:
        return self.sd_dir / f"{self.run}.json" if self.sd_dir else None

    def start(self) -> int:
        """Start serving; return the bound port. A taken port is a clear ``ExporterError``."""
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(self.port, self.host, self.registry)
        except OSError as exc:
            raise ExporterError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror}; choose another "
                "port with MONITOR_EXPORTER_PORT (0 picks a free one)") from None
        self.port = self._server.server_address[1]
        ACTIVE[self.run] = self
        if self.sd_file:
            self.sd_dir.mkdir(parents=True, exist_ok=True)
            target = [{"targets": [f"{self.host}:{self.port}"],
                       "labels": {"monitor_run": self.run}}]
            tmp = self.sd_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(target, indent=2))
            os.replace(tmp, self.sd_file)  # Prometheus never reads a half-written file
        return self.port

    def stop(self, final_scrape_timeout_s: float = 15.0) -> None:
        """Stop serving. If a Prometheus scrapes this exporter, first wait (at most
        ``final_scrape_timeout_s``) for one scrape of the final state, so that the last
        values and a kill in the run's last seconds are not lost."""
        deadline = time.time() + final_scrape_timeout_s
        while (self._server is not None and not self.snapshot.final_state_scraped()
               and time.time() < deadline):
            time.sleep(0.1)
        ACTIVE.pop(self.run, None)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.sd_file and self.sd_file.exists():
            self.sd_file.unlink()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"
