"""Changing the rules of a running sweep: apply, shadow, arm, retire (issue 27).

**Who owns the rules.** The driver: the scheduler of a Tune run (or a ``LoopMonitor``) holds
the run's ``RuleSet``; on a Ray cluster it runs where the run directory is, as everything
else that decides. ``RuleController`` is its part that changes the set.

**How a change reaches it.** ``monitor rules apply|arm|retire RUN ...`` (or the Python API
from another thread) writes a *request*, one JSON file, into ``<run>/heuristics/requests/``
(atomically: a temporary file renamed into place, so the driver never reads half of one) and
waits for the *answer* file the driver writes beside it. The driver looks for requests between
two results: on every result and whenever Tune asks its scheduler for a trial to run, at most
every ``POLL_S`` seconds (one directory listing). So a rule set is swapped whole between two
results, never half-loaded, and the sweep never waits for a request. No port, no server
thread, no credentials: whoever may write the run directory may change its rules, and a
request left while the driver is down is taken when the run is resumed.

**Shadow first.** An applied rule is checked exactly as ``monitor rules check`` checks a file,
then against the run (the roles its vocabulary declares, the keys its trials have reported);
a bad one is refused with one line and nothing changes. An accepted rule gets an engine of its
own, fed every trial's recorded history from the run store (round-robin by iteration, as the
sweep reported it): its would-be verdicts there are recorded as ``retroactive``, and its state
continues from that history on the live results. It stops nothing until it is armed.

**Versions.** Every accepted change is a new revision of the run's rule set, recorded (run
store table ``rule_changes`` and ``heuristics/rule_changes.jsonl``, both fsynced) with each
rule's version (content hash), the operation, the time and the user. A restored driver rebuilds
the set from that record (each applied rule's state from the history again), so applied rules
survive a restart; requests are idempotent (applying a version already there changes nothing).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from heuristics.coverage import HINTS, rule_signals, undeclared
from heuristics.engine import Verdict
from heuristics.expr import DERIVED_SIGNALS
from heuristics.rules import Rule, RuleErrors, load_rules_text, rule_from_mapping, rule_mapping
from heuristics.ruleset import ARMED, SHADOW, Lane, RuleSet
from heuristics.vocabulary import ROLES
from heuristics.yamlfile import ConfigError, read_text
from monitor.driver.verdicts import STORE_FAULTS, VerdictLog, VerdictRecorder
from monitor.durability import describe, note_loss, write_atomic

log = logging.getLogger(__name__)

CHANGES_FILE = Path("heuristics") / "rule_changes.jsonl"
REQUESTS_DIR = Path("heuristics") / "requests"
CHANGE_KEYS = ("revision", "op", "rule", "version", "mode", "time")
CHANGE_SHAPE = {"revision": (int,), "op": (str,), "rule": (str,), "version": (str,),
                "mode": (str, type(None)), "time": (int, float)}
POLL_S = 0.2  # the driver looks for requests at most this often
OPS = ("apply", "arm", "retire")
PROGRESS_S = 5.0  # a replay longer than this says how far it is


class RuleChangeError(ValueError):
    """A change refused (one line: which file, line, rule or key, and what was expected)."""


def user_name() -> str:
    """Who makes a change: the login name from the environment (``getpass``)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name anywhere: still recorded
        return "unknown"


def one_line(exc: RuleErrors | ConfigError, file: str) -> str:
    """A refusal in one line: the first problem, and how many more ``rules check`` lists."""
    errors = exc.errors if isinstance(exc, RuleErrors) else [exc]
    more = f" (and {len(errors) - 1} more: monitor rules check {file})" if len(errors) > 1 \
        else ""
    return f"{errors[0]}{more}"


def check_against_run(rules: list[Rule], vocabulary, experiment: str,
                      reported: set[str] | None) -> None:
    """Refuse (``RuleChangeError``) a rule the run cannot feed: its ``requires`` not met by
    the vocabulary, a role the vocabulary does not declare, or (once results are recorded) a
    signal or key no trial of the run has reported."""
    for rule in rules:
        where = f"{rule.source}:{rule.line}" if rule.line else rule.source
        if not rule.for_experiment(experiment):
            raise RuleChangeError(f"{where}: rule {rule.name!r}: its file is for experiments "
                                  f"{', '.join(rule.experiments)}, not {experiment}: it would "
                                  "never be evaluated")
        if not rule.applies(vocabulary):
            have = {k: getattr(vocabulary, k, None) for k in rule.requires}
            raise RuleChangeError(f"{where}: rule {rule.name!r}: requires {rule.requires}, but "
                                  f"the run declares {have}: it would never be evaluated")
    for notice in undeclared(rules, vocabulary, experiment):
        rule = next(r for r in rules if r.name == notice.rule)
        where = f"{rule.source}:{rule.line}" if rule.line else rule.source
        raise RuleChangeError(f"{where}: {notice.message}")
    if not reported:
        return
    for rule in rules:
        for name in rule_signals(rule):
            if name in ROLES or name in DERIVED_SIGNALS or name in reported:
                continue
            where = f"{rule.source}:{rule.line}" if rule.line else rule.source
            hint = HINTS.get(name, "check the spelling against the keys the trials report")
            known = ", ".join(sorted(k for k in reported if "/" not in k)[:12])
            raise RuleChangeError(f"{where}: rule {rule.name!r}: no trial of this run has "
                                  f"reported {name!r} ({hint}); reported: {known}")


# -- requests: the CLI's way to the driver ------------------------------------------------------
class Requests:
    """Request and answer files of one run (``heuristics/requests/``)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir) / REQUESTS_DIR

    def submit(self, op: str, **payload: Any) -> str:
        """Write a request atomically; return its id."""
        self.dir.mkdir(parents=True, exist_ok=True)
        rid = f"{time.time_ns()}-{os.getpid()}-{secrets.token_hex(3)}"
        write_atomic(self.dir / f"{rid}.request.json",
                     json.dumps({"id": rid, "op": op, **payload}), fault="requests")
        return rid

    def pending(self) -> list[tuple[Path, dict[str, Any] | None]]:
        """Requests not yet answered, oldest first (``None``: a file that is no request)."""
        try:
            paths = sorted(p for p in self.dir.iterdir() if p.name.endswith(".request.json"))
        except OSError:
            return []
        out: list[tuple[Path, dict[str, Any] | None]] = []
        for path in paths:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = None
            out.append((path, data if isinstance(data, dict) else None))
        return out

    def answer(self, path: Path, answer: dict[str, Any]) -> None:
        rid = path.name[:-len(".request.json")]
        try:
            write_atomic(self.dir / f"{rid}.answer.json", json.dumps(answer, default=str),
                         fault="requests")
        finally:
            path.unlink(missing_ok=True)

    def wait(self, rid: str, timeout: float) -> dict[str, Any] | None:
        """The driver's answer to ``rid`` (the file removed), or ``None`` after ``timeout``."""
        path = self.dir / f"{rid}.answer.json"
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = json.loads(path.read_text(encoding="utf-8"))
                path.unlink(missing_ok=True)
                return answer
            except (FileNotFoundError, ValueError):
                pass
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def withdraw(self, rid: str) -> bool:
        """Take back an unanswered request; False if the driver has taken it already."""
        try:
            (self.dir / f"{rid}.request.json").unlink()
            return True
        except FileNotFoundError:
            return False


# -- the record of changes ------------------------------------------------------------------
class RuleChangeLog:
    """Every rule version a run applied, armed or retired: run store and an fsynced log."""

    def __init__(self, run_dir: str | Path, recorder: VerdictRecorder) -> None:
        self.run_dir = Path(run_dir)
        self.recorder = recorder
        self.log = VerdictLog(self.run_dir / CHANGES_FILE, CHANGE_SHAPE)

    def append(self, entry: dict[str, Any]) -> None:
        store = self.recorder._open_store()
        if store is not None:
            try:
                store.add_rule_change(entry)
            except STORE_FAULTS as exc:
                self.recorder._store_fault(exc)
        try:
            self.log.append(entry)
        except OSError as exc:
            what = f"rule changes ({self.log.path}): not all logged ({describe(exc)})"
            if note_loss(self.run_dir, what):
                log.warning("%s", what)

    def read(self) -> list[dict[str, Any]]:
        entries = {key(e): e for e in self.log.read()}
        store = self.recorder._open_store()
        if store is not None:
            try:
                entries.update({key(e): e for e in store.rule_changes()})
            except STORE_FAULTS as exc:
                self.recorder._store_fault(exc)
        return sorted(entries.values(), key=lambda e: (e["revision"], e["time"]))


def key(entry: dict[str, Any]) -> tuple:
    return (entry.get("revision"), entry.get("rule"), entry.get("version"), entry.get("op"))


def read_changes(run_dir: str | Path) -> list[dict[str, Any]]:
    """A run's rule changes for reports: the store's (read-only) and the log's, merged."""
    from monitor.store import StoreError, reading

    entries = {key(e): e for e in VerdictLog(Path(run_dir) / CHANGES_FILE, CHANGE_SHAPE).read()}
    try:
        with reading(run_dir) as store:
            entries.update({key(e): e for e in store.rule_changes()})
    except StoreError:
        pass
    return sorted(entries.values(), key=lambda e: (e["revision"], e["time"]))


# -- the driver's part ---------------------------------------------------------------------------
class RuleController:
    """Applies, arms and retires rules of a live run between two results; records each change.

    Args:
        ruleset: the run's rule set (its base engine holds the rules the run started with).
        run_dir: the run directory (requests, the change log, the store with the history).
        recorder: where verdicts go (retroactive ones too).
    """

    def __init__(self, ruleset: RuleSet, run_dir: str | Path, recorder: VerdictRecorder) -> None:
        self.ruleset = ruleset
        self.run_dir = Path(run_dir)
        self.recorder = recorder
        self.requests = Requests(self.run_dir)
        self.changes = RuleChangeLog(self.run_dir, recorder)
        self.lock = threading.RLock()  # one change or one result at a time
        self._next_poll = 0.0
        self._started = False

    @property
    def engine(self):
        return self.ruleset.base

    # -- start and restore ------------------------------------------------------------------
    def start(self) -> None:
        """Record revision 1 (the rules the run started with) on a new run; on a restored one,
        rebuild the applied rules from the record, each from its replayed history."""
        with self.lock:
            if self._started:
                return
            self._started = True
            entries = self.changes.read()
            if not entries:
                now, user = time.time(), user_name()
                for rule in self.engine.rules:
                    self.changes.append(self._entry(1, "initial", rule, self.engine.versions[
                        rule.name], ARMED, user, now, rule.source))
                return
            self._rebuild(entries)

    def _rebuild(self, entries: list[dict[str, Any]]) -> None:
        self.ruleset.lanes = []
        applied = [e for e in entries if e["op"] == "apply"]
        lanes: dict[tuple[str, str], Lane] = {}
        for e in applied:
            try:
                rule = rule_from_mapping(e["mapping"], e.get("group") or "applied",
                                         e.get("file") or "applied")
            except (RuleErrors, KeyError, TypeError) as exc:
                log.warning("%s: rule %s version %s cannot be read back (%s); it is left out",
                            self.changes.log.path, e.get("rule"), e.get("version"), exc)
                continue
            lanes[(e["rule"], e["version"])] = self.ruleset.new_lane(rule)
        if lanes:
            self._replay(list(lanes.values()), "restoring applied rules")
        for revision in sorted({e["revision"] for e in entries if e["op"] in OPS}):
            batch = [e for e in entries if e["revision"] == revision and e["op"] in OPS]
            self.ruleset.revision = revision - 1
            install = [lanes[(e["rule"], e["version"])] for e in batch
                       if e["op"] == "apply" and (e["rule"], e["version"]) in lanes]
            for lane in install:
                lane.revision = revision
            if install:
                self.ruleset.install(install)
            for e in batch:
                try:
                    if e["op"] == "arm":
                        self.ruleset.arm(e["rule"])
                    elif e["op"] == "retire":
                        self.ruleset.retire(e["rule"], e.get("was", SHADOW))
                except KeyError:
                    log.warning("%s: revision %d (%s %s) does not follow from the revisions "
                                "before; left out", self.changes.log.path, revision, e["op"],
                                e["rule"])
            self.ruleset.revision = revision
        for engine in self.ruleset.engines():
            engine.revision = self.ruleset.revision
        if len(entries) > len(self.engine.rules):
            log.info("rule set of %s restored at revision %d (%d rules applied since the "
                     "start)", self.run_dir.name, self.ruleset.revision, len(applied))

    # -- history -----------------------------------------------------------------------------
    def _history(self) -> list[tuple[str, dict[str, Any]]] | None:
        """Every recorded result, round-robin by iteration in the trials' start order; None
        without a readable store."""
        from monitor.driver.recording import flush_live
        from monitor.store import StoreError, reading

        flush_live(self.run_dir)
        try:
            with reading(self.run_dir) as store:
                trials = sorted(store.trials(), key=lambda t: (t.get("started") or 0,
                                                               t["trial_id"]))
                results = {t["trial_id"]: store.results(t["trial_id"]) for t in trials}
        except StoreError as exc:
            log.warning("no recorded history to replay new rules over (%s); they are "
                        "shadowed from the next result on", exc)
            return None
        order = {t["trial_id"]: i for i, t in enumerate(trials)}
        rows = sorted(((r["training_iteration"], order[t], t, r) for t, rs in results.items()
                       for r in rs), key=lambda x: (x[0], x[1]))
        return [(t, r) for _, _, t, r in rows]

    def _reported(self) -> set[str] | None:
        from monitor.driver.recording import flush_live
        from monitor.store import StoreError, reading

        flush_live(self.run_dir)
        try:
            with reading(self.run_dir) as store:
                return store.signal_names()
        except StoreError:
            return None

    def _replay(self, lanes: list[Lane], what: str) -> list[Verdict]:
        """Feed the recorded history to ``lanes``' engines (as candidates); their verdicts."""
        history = self._history() or []
        out: list[Verdict] = []
        started = last = time.monotonic()
        for i, (trial, result) in enumerate(history, 1):
            for lane in lanes:
                out.extend(lane.engine.observe(trial, result, wall_time=time.time()))
            if time.monotonic() - last > PROGRESS_S:
                last = time.monotonic()
                log.warning("%s: replayed %d of %d recorded results (%.0f s)", what, i,
                            len(history), last - started)
        return out

    # -- requests ---------------------------------------------------------------------------
    def poll(self, force: bool = False) -> int:
        """Take every pending request (at most every ``POLL_S`` unless ``force``); how many.
        Never raises: a request that cannot be taken is answered with why."""
        now = time.monotonic()
        if not force and now < self._next_poll:
            return 0
        self._next_poll = now + POLL_S
        pending = self.requests.pending()
        for path, request in pending:
            try:
                answer = self.handle(request)
            except Exception as exc:  # noqa: BLE001 - a request never ends the sweep
                answer = {"ok": False, "message": f"the driver could not take the request "
                          f"({describe(exc)}); the rule set is unchanged"}
            try:
                self.requests.answer(path, answer)
            except OSError as exc:
                log.warning("%s: cannot answer a rule request (%s): %s", path, describe(exc),
                            answer.get("message"))
            (log.info if answer.get("ok") else log.warning)("rules: %s", answer.get("message"))
        return len(pending)

    def handle(self, request: dict[str, Any] | None) -> dict[str, Any]:
        """Answer one request (``{"ok", "message", "revision", ...}``)."""
        if request is None or request.get("op") not in OPS:
            return {"ok": False, "message": f"not a rule request (expected an object with op "
                    f"one of {list(OPS)})"}
        user = str(request.get("user") or "unknown")
        try:
            if request["op"] == "apply":
                return self.apply_text(str(request.get("text", "")),
                                       str(request.get("file") or "rules.yaml"), user)
            if request["op"] == "arm":
                return self.arm(str(request.get("rule")), user)
            return self.retire(str(request.get("rule")), request.get("version"), user)
        except RuleChangeError as exc:
            return {"ok": False, "message": str(exc), "revision": self.ruleset.revision}

    # -- changes ----------------------------------------------------------------------------
    def apply_file(self, path: str | Path, user: str | None = None) -> dict[str, Any]:
        try:
            text = read_text(path, "a rule file")
        except ConfigError as exc:
            raise RuleChangeError(str(exc)) from None
        return self.apply_text(text, str(path), user or user_name())

    def apply_text(self, text: str, file: str, user: str) -> dict[str, Any]:
        """Validate ``text`` (a rule file), replay each new rule version over the recorded
        history, record the change and swap it in; ``RuleChangeError`` when refused."""
        with self.lock:
            self.start()
            try:
                rules = load_rules_text(text, file)
            except RuleErrors as exc:
                raise RuleChangeError(one_line(exc, file)) from None
            base = self.engine
            check_against_run(rules, base.vocabulary, base.experiment, self._reported())
            new, same = [], []
            for rule in rules:
                lane = self.ruleset.new_lane(rule)
                (same if lane.version in self.ruleset.versions(rule.name).values()
                 else new).append(lane)
            said = [f"{x.rule.name} {x.version} is already "
                    f"{self._mode_of(x.rule.name, x.version)}" for x in same]
            if not new:
                return {"ok": True, "message": f"nothing to change: {'; '.join(said)} "
                        f"(revision {self.ruleset.revision})", "revision": self.ruleset.revision,
                        "rules": []}
            verdicts = self._replay(new, f"applying {file}")
            revision = self.ruleset.revision + 1
            now = time.time()
            for lane in new:
                self.changes.append(self._entry(revision, "apply", lane.rule, lane.version,
                                                SHADOW, user, now, file))
            self.ruleset.install(new)  # the swap: between two results
            would = {}
            for v in verdicts:  # recorded, not counted: the exporter counts live events
                v.retroactive, v.ruleset_revision = True, revision
                self.recorder.record(v.to_dict())
                if v.action == "kill":
                    would.setdefault(v.rule, {}).setdefault(v.trial, v.iteration)
            parts = []
            for lane in new:
                hits = would.get(lane.rule.name, {})
                shown = ", ".join(f"{t} at {it}" for t, it in list(hits.items())[:5])
                what = (f"would have stopped {len(hits)} trial(s) ({shown})" if hits
                        else "would have stopped no trial" if lane.rule.action == "kill"
                        else "warns only")
                parts.append(f"{lane.rule.name} {lane.version} in shadow; over the recorded "
                             f"history it {what}")
            names = " / ".join(x.rule.name for x in new)
            message = (f"revision {revision}: " + "; ".join(parts + said)
                       + f". To let it act: monitor rules arm {self.run_dir.name} {names}")
            return {"ok": True, "message": message, "revision": revision,
                    "rules": [{"rule": x.rule.name, "version": x.version,
                               "would_kill": would.get(x.rule.name, {})} for x in new]}

    def arm(self, name: str, user: str | None = None) -> dict[str, Any]:
        """Make the shadow version of ``name`` act (``RuleChangeError`` if there is none)."""
        with self.lock:
            self.start()
            versions = self.ruleset.versions(name)
            if SHADOW not in versions:
                if ARMED in versions:
                    return {"ok": True, "message": f"{name} {versions[ARMED]} is already armed "
                            f"(revision {self.ruleset.revision})",
                            "revision": self.ruleset.revision}
                raise RuleChangeError(f"rule {name!r}: no shadow version to arm in "
                                      f"{self.run_dir.name} (rules: "
                                      f"{', '.join(self._names())})")
            lane = next(x for x in self.ruleset.lanes if x.rule.name == name
                        and x.mode == SHADOW)
            revision = self.ruleset.revision + 1
            entry = self._entry(revision, "arm", lane.rule, lane.version, ARMED,
                                user or user_name(), time.time(), None)
            entry["replaced"] = versions.get(ARMED)
            self.changes.append(entry)
            version, replaced = self.ruleset.arm(name)
            instead = f", replacing {replaced}" if replaced else ""
            return {"ok": True, "revision": revision, "rule": name, "version": version,
                    "message": f"revision {revision}: {name} {version} armed{instead}; it "
                    "stops trials from the next result on"}

    def retire(self, name: str, version: str | None = None,
               user: str | None = None) -> dict[str, Any]:
        """Drop a version of ``name``: the one given, or the only one there is."""
        with self.lock:
            self.start()
            versions = self.ruleset.versions(name)
            if not versions:
                raise RuleChangeError(f"rule {name!r}: not in the rule set of "
                                      f"{self.run_dir.name} (rules: {', '.join(self._names())})")
            if version:
                modes = [m for m, v in versions.items() if v.startswith(str(version))]
                if len(modes) != 1:
                    raise RuleChangeError(f"rule {name!r}: no version {version!r}; its "
                                          f"versions: {self._shown(versions)}")
            elif len(versions) > 1:
                raise RuleChangeError(f"rule {name!r} has two versions ({self._shown(versions)});"
                                      f" say which: --version VERSION")
            else:
                modes = list(versions)
            mode = modes[0]
            rule = self._rule(name, mode)
            revision = self.ruleset.revision + 1
            entry = self._entry(revision, "retire", rule, versions[mode], "retired",
                                user or user_name(), time.time(), None)
            entry["was"] = mode
            self.changes.append(entry)
            retired = self.ruleset.retire(name, mode)
            return {"ok": True, "revision": revision, "rule": name, "version": retired,
                    "message": f"revision {revision}: {name} {retired} ({mode}) retired"}

    # -- helpers -----------------------------------------------------------------------------
    def _rule(self, name: str, mode: str) -> Rule:
        if mode == ARMED:
            found = next((r for r in self.engine.rules if r.name == name), None)
            if found is not None:
                return found
        return next(x.rule for x in self.ruleset.lanes if x.rule.name == name
                    and x.mode == mode)

    def _names(self) -> list[str]:
        return sorted({d["rule"] for d in self.ruleset.describe()})

    def _mode_of(self, name: str, version: str) -> str:
        return next((m for m, v in self.ruleset.versions(name).items() if v == version), "?")

    @staticmethod
    def _shown(versions: dict[str, str]) -> str:
        return ", ".join(f"{m} {v}" for m, v in versions.items())

    @staticmethod
    def _entry(revision: int, op: str, rule: Rule, version: str, mode: str, user: str,
               when: float, file: str | None) -> dict[str, Any]:
        entry = {"revision": revision, "op": op, "rule": rule.name, "version": version,
                 "mode": mode, "time": when, "user": user, "action": rule.action,
                 "failure": rule.failure, "expr": rule.expr}
        if op in ("initial", "apply"):
            entry.update(file=file, group=rule.group, mapping=rule_mapping(rule))
        return entry

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["lock"] = None
        state["_started"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()
