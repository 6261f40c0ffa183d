"""Prometheus exporter: pre-rendered exposition text over a snapshot of every trial's signals.

Metric names share the ``tune_health_`` prefix and carry the signal in the name; labels are
``experiment``, ``trial``, ``role`` and (per-layer signals) ``layer``. Series of a trial that
ended stay ``retain_s`` seconds (so the last values get scraped) and are then dropped.

Scale: each trial's lines are rendered once per result (``SignalSnapshot.update``), grouped by
metric family; a scrape joins the families' headers with every trial's pre-rendered chunks (no
per-sample Python object per scrape), caches the body until the next change, and gzips it when
the client asks (``Accept-Encoding: gzip``, as Prometheus does). Ended trials are dropped in
O(expired) from a queue ordered by end time.
"""

from __future__ import annotations

import atexit
import errno
import ipaddress
import json
import logging
import os
import socket
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from heuristics.results import number, observe
from heuristics.vocabulary import Vocabulary
from monitor.console import plain
from monitor.durability import describe, write_atomic
from monitor.redaction import redact

log = logging.getLogger(__name__)

PREFIX = "tune_health"
LAYER_METRICS = {  # signal -> (metric name, help)
    "dead_ratio": ("dead_ratio", "Fraction of units never positive in the window"),
    "evergreen_ratio": ("evergreen_ratio", "Fraction of units always positive in the window"),
    "healthy_ratio": ("healthy_ratio", "Fraction of units whose activity varies with the input"),
    "activation_std": ("activation_std", "Per-unit activation std over batch and time, "
                       "averaged over units"),
    "activation_mean": ("activation_mean", "Mean activation over the window"),
    "nonfinite_count": ("nonfinite_activations", "Non-finite activation values in the window"),
    "saturated_ratio": ("saturated_ratio", "Recurrent layers: fraction of units pinned near "
                        "+-1 over the window"),
}
MODEL_METRICS = {
    "output_power_db": ("output_power_db", "Mean spectral power of the model output (dB)"),
    "target_power_db": ("target_power_db", "Mean spectral power of the target (dB)"),
    "power_loss": ("power_loss", "Parallel WaveNet power loss (squared distance of "
                   "time-averaged |STFT|^2)"),
    "power_ratio_db": ("power_ratio_db", "Output over target spectral power (dB)"),
}
SCALAR_METRICS = {  # scalar key (a role, or Tune's iteration) -> (metric name, help)
    "grad_norm": ("gradient_norm", "Gradient norm before clipping, mean over the iteration"),
    "training_iteration": ("training_iteration", "Last reported training iteration"),
    "step_time_s": ("step_seconds", "Wall time per training step"),
}
LOSS_ROLES = {"train_loss": "train", "generator_loss": "generator",
              "discriminator_loss": "discriminator", "adversarial_loss": "adversarial"}
LOSS_HELP = "Training losses by declared role (train, generator, discriminator, adversarial)"
VALIDATION_HELP = "The declared validation metric (label metric: its key, mode: min or max)"


def result_family(role: str, key: str | None = None) -> tuple[str, str] | None:
    """Where the value of a declared role is exported: ``("loss", role label)``,
    ``("validation", the metric's key)``, ``("scalar", role)`` or ``None``.

    The one place that maps results to metric families; it reads the experiment's declared
    vocabulary (``heuristics.vocabulary``), never metric-name conventions."""
    if role in LOSS_ROLES:
        return "loss", LOSS_ROLES[role]
    if role == "validation":
        return "validation", key or "validation"
    if role in SCALAR_METRICS:
        return "scalar", role
    return None


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
    first: float = 0.0  # the time of the trial's first result
    ended: float | None = None
    chunks: dict[str, bytes] = field(default_factory=dict)  # family -> its lines of this trial


# -- exposition text -------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    key: str  # where a trial's values come from: "layer:<signal>", "model:<k>", "loss", ...
    name: str  # exposed name (counters with their _total)
    kind: str
    doc: str

    def header(self) -> bytes:
        doc = self.doc.replace("\\", r"\\").replace("\n", r"\n")
        return f"# HELP {self.name} {doc}\n# TYPE {self.name} {self.kind}\n".encode()


def _families(prefix: str) -> list[Family]:
    """Per-trial families in exposition order (the kill and warning counters follow)."""
    g = "gauge"
    out = [Family(f"layer:{s}", f"{prefix}_{n}", g, d) for s, (n, d) in LAYER_METRICS.items()]
    out += [Family(f"model:{k}", f"{prefix}_{n}", g, d) for k, (n, d) in MODEL_METRICS.items()]
    out += [Family("loss", f"{prefix}_loss", g, LOSS_HELP),
            Family("validation", f"{prefix}_validation", g, VALIDATION_HELP),
            Family("info", f"{prefix}_trial_info", g, "Trials being monitored (value 1)")]
    out += [Family(f"scalar:{k}", f"{prefix}_{n}", g, d) for k, (n, d) in SCALAR_METRICS.items()]
    out += [Family("reports", f"{prefix}_reports_total", "counter", "Results received per trial"),
            Family("updated", f"{prefix}_last_report_timestamp_seconds", g,
                   "Unix time of the last result"),
            Family("first", f"{prefix}_first_report_timestamp_seconds", g,
                   "Unix time of the first result")]
    return out


FAMILIES = _families(PREFIX)
KILLS = Family("kills", f"{PREFIX}_kills_total", "counter", "Trials stopped by a heuristic rule")
WARNINGS = Family("warnings", f"{PREFIX}_warnings_total", "counter",
                  "Warnings raised by heuristic rules")
KILL_TIMES = Family("kill_times", f"{PREFIX}_kill_timestamp_seconds", "gauge",
                    "Unix time a heuristic rule stopped the trial (labels: the rule, its failure, "
                    "the iteration and the reason); one series per killed trial, for alerts")
NOTICES = Family("notices", f"{PREFIX}_notice_info", "gauge",
                 "A notice of the run (value 1): a rule that cannot see its signal "
                 "(rule, signal), or a report left out in part (rule \"(input)\")")
KILL_LABELS = ("failure", "iteration", "reason", "rule")  # besides experiment and trial


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render_trial(t: TrialSignals, prefix: str = PREFIX) -> dict[str, bytes]:
    """The exposition lines of one trial, by family key (labels sorted by name, values
    formatted as ``prometheus_client`` does)."""
    e, tr, r = _escape(t.experiment), _escape(t.trial), _escape(t.role)
    fmt = floatToGoString
    tail = f'role="{r}",trial="{tr}"}} '
    plain = f'{{experiment="{e}",{tail}'  # {experiment=..,role=..,trial=..}
    out: dict[str, list[str]] = {}
    names = {s: f"{prefix}_{n}" for s, (n, _) in LAYER_METRICS.items()}
    for layer, values in t.layers.items():
        labels = f'{{experiment="{e}",layer="{_escape(layer)}",{tail}'
        for signal, v in values.items():
            if signal in names:
                out.setdefault(f"layer:{signal}", []).append(f"{names[signal]}{labels}{fmt(v)}\n")
    for k, v in t.model.items():
        if k in MODEL_METRICS:
            out[f"model:{k}"] = [f"{prefix}_{MODEL_METRICS[k][0]}{plain}{fmt(v)}\n"]
    for family, label, table in (("loss", "loss", t.losses),
                                 ("validation", "metric", t.validation)):
        if table:
            out[family] = [f'{prefix}_{family}{{experiment="{e}",{label}="{_escape(k)}",'
                           f"{tail}{fmt(v)}\n" for k, v in table.items()]
    out["info"] = [f"{prefix}_trial_info{plain}1.0\n"]
    for k, v in t.scalars.items():
        out[f"scalar:{k}"] = [f"{prefix}_{SCALAR_METRICS[k][0]}{plain}{fmt(v)}\n"]
    out["reports"] = [f"{prefix}_reports_total{plain}{fmt(t.reports)}\n"]
    out["updated"] = [f"{prefix}_last_report_timestamp_seconds{plain}{fmt(t.updated)}\n"]
    out["first"] = [f"{prefix}_first_report_timestamp_seconds{plain}{fmt(t.first)}\n"]
    return {k: "".join(v).encode() for k, v in out.items()}


def _render_counters(family: Family, table: dict[tuple[str, str, str], int]) -> list[bytes]:
    lines = [family.header()]
    lines += [f'{family.name}{{experiment="{_escape(e)}",failure="{_escape(f)}",'
              f'rule="{_escape(r)}"}} {floatToGoString(n)}\n'.encode()
              for (e, r, f), n in table.items()]
    return lines


def _render_labelled(family: Family, table: dict[tuple[str, ...], tuple[dict[str, str], float]]
                     ) -> list[bytes]:
    """A family whose series carry arbitrary labels: ``{key: (labels, value)}``."""
    lines = [family.header()]
    for labels, value in table.values():
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        lines.append(f"{family.name}{{{text}}} {floatToGoString(value)}\n".encode())
    return lines


def kill_labels(verdict: dict[str, Any]) -> dict[str, str]:
    """The labels of a kill's ``tune_health_kill_timestamp_seconds`` series (one line each)."""
    return {"experiment": plain(verdict["experiment"]), "trial": plain(verdict["trial"]),
            "rule": plain(verdict["rule"]), "failure": plain(verdict["failure"]),
            "iteration": str(verdict.get("iteration", "")),
            "reason": plain(verdict.get("reason", ""))}


class SignalSnapshot:
    """Thread-safe latest signals per trial, written by the driver, read by scrapes."""

    def __init__(self, retain_s: float = 30.0, prefix: str = PREFIX,
                 vocabulary: Vocabulary | None = None) -> None:
        self.retain_s = retain_s
        self.vocabulary = vocabulary or Vocabulary()  # which reported keys play which role
        self.prefix = prefix
        self._families = FAMILIES if prefix == PREFIX else _families(prefix)
        self._headers = [(f.key, f.header()) for f in self._families]
        self._trials: dict[str, TrialSignals] = {}
        self._ended: deque[tuple[float, str]] = deque()  # (end time, trial), oldest first
        self._kills: dict[tuple[str, str, str], int] = {}
        self._warnings: dict[tuple[str, str, str], int] = {}
        # (experiment, trial) -> (labels, kill time); (experiment, rule, signal) -> (labels, 1)
        self._kill_times: dict[tuple[str, ...], tuple[dict[str, str], float]] = {}
        self._notices: dict[tuple[str, ...], tuple[dict[str, str], float]] = {}
        self._lock = threading.Lock()
        self._version = 0  # bumped by every change of the exposition
        self._body: tuple[int, bytes, bytes | None] | None = None  # version, text, gzipped
        self.changed = time.time()  # the last change of anything a scrape shows
        self.scraped: float | None = None  # when the last scrape began (None: never scraped)

    def mark_scraped(self) -> None:
        self.scraped = time.time()

    def final_state_scraped(self) -> bool:
        """True when nobody scrapes, or a scrape began after the last change."""
        return self.scraped is None or self.scraped > self.changed

    def _touch(self) -> None:  # under the lock
        self._version += 1
        self.changed = time.time()

    def update(self, experiment: str, trial: str, result: dict[str, Any]) -> None:
        """Record one Tune result (the trainables' metrics with their ``health`` block)."""
        obs = observe(result, self.vocabulary)
        t = TrialSignals(experiment, trial, obs.role)
        t.iteration = obs.iteration
        t.layers, t.model = obs.layers, obs.model
        tables = {"loss": t.losses, "validation": t.validation, "scalar": t.scalars}
        keys = self.vocabulary.keys()
        for role, value in obs.roles.items():
            family = result_family(role, keys.get(role))
            if family is not None:
                tables[family[0]][family[1]] = value
        t.scalars["training_iteration"] = float(obs.iteration)
        t.updated = time.time()
        with self._lock:
            previous = self._trials.get(trial)
        t.reports = (previous.reports if previous else 0) + 1
        t.first = previous.first if previous else t.updated
        t.chunks = render_trial(t, self.prefix)  # outside the lock: scrapes go on meanwhile
        with self._lock:
            self._trials[trial] = t
            self._touch()

    def end(self, trial: str) -> None:
        """Mark a trial as ended; its series go ``retain_s`` seconds later."""
        with self._lock:
            t = self._trials.get(trial)
            if t is not None:
                t.ended = time.time()
                self._ended.append((t.ended, trial))
            self._touch()

    def _expire(self) -> None:
        """Drop trials ended more than ``retain_s`` ago: O(expired). Under the lock."""
        now = time.time()
        while self._ended and now - self._ended[0][0] > self.retain_s:
            ended, trial = self._ended.popleft()
            t = self._trials.get(trial)
            if t is not None and t.ended == ended:  # not reported again since it ended
                del self._trials[trial]
                self._version += 1

    def declare(self, experiment: str, kills: list[tuple[str, str]],
                warnings: list[tuple[str, str]]) -> None:
        """Create the counters of every (rule, failure) at 0, so that their first increment is
        a change Prometheus can see (``changes()``, ``increase()``)."""
        with self._lock:
            for rule, failure in kills:
                self._kills.setdefault((experiment, rule, failure), 0)
            for rule, failure in warnings:
                self._warnings.setdefault((experiment, rule, failure), 0)
            self._version += 1

    def declare_rules(self, experiment: str, rules: list[Any], shadow: bool = False) -> None:
        """``declare`` every rule's counter: kill rules count kills (but in shadow mode, where
        they stop nothing), every other rule warnings."""
        stops = [(r.name, r.failure) for r in rules if r.action == "kill" and not shadow]
        self.declare(experiment, stops,
                     [(r.name, r.failure) for r in rules if (r.name, r.failure) not in stops])

    def count_verdict(self, verdict: dict[str, Any]) -> None:
        """Count a verdict (``Verdict.to_dict()``): a kill that stops, else a warning."""
        stops = verdict["action"] == "kill" and not verdict.get("shadow")
        if stops:
            labels = kill_labels(verdict)
            wall_time = number(verdict.get("wall_time"))
            with self._lock:  # before the count: an alert on the counter finds the reason
                self._kill_times[(labels["experiment"], labels["trial"])] = (
                    labels, wall_time if wall_time is not None else time.time())
        count = self.count_kill if stops else self.count_warning
        count(verdict["experiment"], verdict["rule"], verdict["failure"])

    def note(self, experiment: str, rule: str, signal: str, message: str) -> None:
        """Export a notice of the run (a rule that cannot see its signal...) as an info
        series."""
        labels = {"experiment": plain(experiment), "rule": plain(rule),
                  "signal": plain(signal), "message": plain(message)}
        with self._lock:
            self._notices[(labels["experiment"], labels["rule"], labels["signal"])] = (labels,
                                                                                       1.0)
            self._touch()

    def kill_times(self) -> dict[tuple[str, ...], tuple[dict[str, str], float]]:
        with self._lock:
            return dict(self._kill_times)

    def notices(self) -> dict[tuple[str, ...], tuple[dict[str, str], float]]:
        with self._lock:
            return dict(self._notices)

    def _count(self, table: dict[tuple[str, str, str], int], experiment: str, rule: str,
               failure: str) -> None:
        with self._lock:
            key = (experiment, rule, failure)
            table[key] = table.get(key, 0) + 1
            self._touch()

    def count_kill(self, experiment: str, rule: str, failure: str) -> None:
        self._count(self._kills, experiment, rule, failure)

    def count_warning(self, experiment: str, rule: str, failure: str) -> None:
        self._count(self._warnings, experiment, rule, failure)

    def trials(self) -> list[TrialSignals]:
        """Live trials (ended ones past their retention are dropped here)."""
        with self._lock:
            self._expire()
            return list(self._trials.values())

    def kills(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._kills)

    def warnings(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._warnings)

    def exposition(self, gzipped: bool = False) -> bytes:
        """The whole exposition text (Prometheus text format 0.0.4), gzipped if asked.

        Joins pre-rendered per-trial chunks; the body is cached until the next change."""
        with self._lock:
            self._expire()
            cached = self._body
            if cached is None or cached[0] != self._version:
                version = self._version
                trials = list(self._trials.values())
                kills, warnings = dict(self._kills), dict(self._warnings)
                kill_times, notices = dict(self._kill_times), dict(self._notices)
                cached = None
        if cached is None:
            parts: list[bytes] = []
            for key, header in self._headers:
                parts.append(header)
                parts.extend(t.chunks[key] for t in trials if key in t.chunks)
            parts += _render_counters(KILLS, kills) + _render_counters(WARNINGS, warnings)
            parts += _render_labelled(KILL_TIMES, kill_times) + _render_labelled(NOTICES, notices)
            cached = (version, b"".join(parts), None)
        if gzipped and cached[2] is None:
            compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip container, fast level
            cached = (cached[0], cached[1], compressor.compress(cached[1]) + compressor.flush())
        with self._lock:
            if self._body is None or self._body[0] <= cached[0]:
                self._body = cached
        return cached[2] if gzipped else cached[1]  # type: ignore[return-value]


class HealthCollector(Collector):
    """The snapshot as ``prometheus_client`` metric families, for a ``CollectorRegistry``.

    The exporter's server does not use it (it serves ``SignalSnapshot.exposition()``, the same
    text without per-sample objects); it is the reference the fast text is tested against.
    """

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
        losses = gauge("loss", LOSS_HELP, ["loss"])
        validation = gauge("validation", VALIDATION_HELP, ["metric"])
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
        first = gauge("first_report_timestamp_seconds", "Unix time of the first result", [])
        for t in trials:
            reports.add_metric([t.experiment, t.trial, t.role], t.reports)
            updated.add_metric([t.experiment, t.trial, t.role], t.updated)
            first.add_metric([t.experiment, t.trial, t.role], t.first)
        yield reports
        yield updated
        yield first
        kills = CounterMetricFamily(f"{self.prefix}_kills", KILLS.doc,
                                    labels=["experiment", "rule", "failure"])
        for (experiment, rule, failure), n in self.snapshot.kills().items():
            kills.add_metric([experiment, rule, failure], n)
        yield kills
        warnings = CounterMetricFamily(f"{self.prefix}_warnings", WARNINGS.doc,
                                       labels=["experiment", "rule", "failure"])
        for (experiment, rule, failure), n in self.snapshot.warnings().items():
            warnings.add_metric([experiment, rule, failure], n)
        yield warnings
        for family, table in ((KILL_TIMES, self.snapshot.kill_times()),
                              (NOTICES, self.snapshot.notices())):
            out = GaugeMetricFamily(family.name, family.doc)
            for labels, value in table.values():
                out.add_sample(family.name, labels, value)
            yield out


# -- serving ---------------------------------------------------------------------------------
class ExporterError(RuntimeError):
    """The exporter cannot serve (bad host or port, port taken): one line, no traceback."""


ACTIVE: dict[str, Exporter] = {}  # run name -> the exporter serving it in this process
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_port(value: Any, source: str = "MONITOR_EXPORTER_PORT") -> int:
    """A TCP port 0-65535 (0: any free port) from an int or text; ``ExporterError`` else."""
    try:
        port = int(str(value).strip(), 10)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ExporterError(f"{source}={value!r}: expected a port number from 0 to 65535 "
                            "(0 picks a free one)")
    return port


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).version == 6
    except ValueError:
        return False


def _advertised_host(host: str) -> str:
    """The host that Prometheus should scrape (and the URL shows) for a bound ``host``.

    A wildcard bind (0.0.0.0, ::) is not an address one can connect to: the machine's name
    when it resolves (a remote Prometheus is why one binds every interface), loopback else."""
    bare = host.strip("[]")
    if bare in ("0.0.0.0", "::", ""):
        name = socket.gethostname()
        try:
            socket.getaddrinfo(name, None)
            return name
        except OSError:
            return "127.0.0.1" if bare != "::" else "[::1]"
    return f"[{bare}]" if _is_ipv6(bare) else bare


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # a taken port must fail, not be shared
    snapshot: SignalSnapshot

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("scrape from %s failed", client_address, exc_info=True)  # e.g. went away


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404, "try /metrics")
            return
        snapshot = self.server.snapshot
        snapshot.mark_scraped()
        gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
        body = snapshot.exposition(gzipped=gzipped)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per scrape every 5 s is noise


class Exporter:
    """Serves ``/metrics`` for one experiment and announces itself in a file_sd file.

    ``host``/``port`` default to ``MONITOR_EXPORTER_HOST`` (127.0.0.1) and
    ``MONITOR_EXPORTER_PORT`` (0: a free port). Bad values, or a port already taken, raise
    ``ExporterError`` with one printable line.
    """

    def __init__(self, experiment: str, run: str, host: str | None = None,
                 port: int | str | None = None, sd_dir: str | Path | None = None,
                 retain_s: float = 30.0, vocabulary: Vocabulary | None = None) -> None:
        self.experiment, self.run = experiment, run
        host = host if host is not None else os.environ.get("MONITOR_EXPORTER_HOST", "127.0.0.1")
        self.host = str(host).strip().strip("[]") or "127.0.0.1"
        source = "port" if port is not None else "MONITOR_EXPORTER_PORT"
        self.port = parse_port(port if port is not None
                               else os.environ.get("MONITOR_EXPORTER_PORT", "0"), source)
        self.sd_dir = Path(sd_dir) if sd_dir else None
        self.snapshot = SignalSnapshot(retain_s, vocabulary=vocabulary)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.sd_failed: str | None = None  # why the file_sd file could not be written

    def note(self, rule: str, signal: str, message: str) -> None:
        """Export a notice of this run (``tune_health_notice_info``)."""
        self.snapshot.note(self.experiment, rule, signal, message)

    @classmethod
    def for_run(cls, run: str) -> Exporter | None:
        """The exporter serving ``run`` in this process, if any."""
        return ACTIVE.get(run)

    @property
    def sd_file(self) -> Path | None:
        return self.sd_dir / f"{self.run}.json" if self.sd_dir else None

    @property
    def target(self) -> str:
        """``host:port`` as Prometheus should scrape it (IPv6 in brackets)."""
        return f"{_advertised_host(self.host)}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    def start(self) -> int:
        """Start serving; return the bound port. A taken port is a clear ``ExporterError``."""
        if self.host in ("0.0.0.0", "::"):
            log.warning("the health exporter listens on every interface (%s): anyone who can "
                        "reach this machine can read the metrics; the file_sd target is %s",
                        self.host, self.target.rsplit(":", 1)[0])
        host = redact(self.host) if any(c in self.host for c in "@?#") \
            else ascii(self.host)[1:-1]  # one line, no credentials
        where = f"cannot serve metrics on {host}:{self.port}"
        set_host = ("set MONITOR_EXPORTER_HOST to an address or name of this machine "
                    "(default 127.0.0.1)")
        if any(c in self.host for c in "/@ ") or not self.host.isprintable():
            raise ExporterError(f"{where}: the host '{host}' is not a host name or "
                                f"address (a URL?); {set_host}")
        try:
            server = (_Server6 if _is_ipv6(self.host) else _Server)((self.host, self.port),
                                                                     _Handler)
        except socket.gaierror as exc:
            raise ExporterError(f"{where}: the host {self.host!r} does not resolve "
                                f"({exc.strerror}); {set_host}") from None
        except (OSError, OverflowError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            if getattr(exc, "errno", None) == errno.EADDRNOTAVAIL:
                raise ExporterError(f"{where}: {why} (the host {self.host!r} is not an address "
                                    f"of this machine); {set_host}") from None
            raise ExporterError(f"{where}: {why}; choose another port with "
                                "MONITOR_EXPORTER_PORT (0 picks a free one)") from None
        server.snapshot = self.snapshot
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name=f"exporter-{self.run}",
                                        daemon=True)
        self._thread.start()
        ACTIVE[self.run] = self
        if self.sd_file:
            target = [{"targets": [self.target], "labels": {"monitor_run": self.run}}]
            try:  # atomic: Prometheus never reads a half-written file
                self.sd_dir.mkdir(parents=True, exist_ok=True)
                write_atomic(self.sd_file, json.dumps(target, indent=2), "file_sd")
            except OSError as exc:  # full disk, read-only: serve anyway, say so
                self.sd_failed = (f"file_sd file {self.sd_file}: not written ({describe(exc)}); "
                                  f"Prometheus must be given the target {self.target} by hand")
                log.warning("%s", self.sd_failed)
            atexit.register(self._remove_sd_file)  # also when the driver dies of an exception
        return self.port

    def _remove_sd_file(self) -> None:
        if self.sd_file:
            self.sd_file.unlink(missing_ok=True)

    def stop(self, final_scrape_timeout_s: float = 15.0) -> None:
        """Stop serving and remove the file_sd file. If a Prometheus scrapes this exporter,
        first wait (at most ``final_scrape_timeout_s``) for one scrape of the final state, so
        that the last values and a kill in the run's last seconds are not lost."""
        deadline = time.time() + final_scrape_timeout_s
        while (self._server is not None and not self.snapshot.final_state_scraped()
               and time.time() < deadline):
            time.sleep(0.1)
        ACTIVE.pop(self.run, None)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._remove_sd_file()
        atexit.unregister(self._remove_sd_file)
