"""The rule expression language: tokenizer, parser (to a tree) and evaluator. No ``eval``.

Grammar (lowest precedence first)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := "-" unary | primary
    primary    := NUMBER | "(" expr ")" | NAME "(" args ")" | NAME selector?
    selector   := "{" "layer" ("=" | "=~"...) STRING "}"      layer glob, e.g. {layer="blocks.*"}

A NAME is a per-layer health signal (``dead_ratio``...), a model signal (``power_ratio_db``...),
a declared role (``train_loss``, ``generator_loss``, ``discriminator_loss``, ``validation``...:
the experiment's ``Vocabulary`` says which reported key plays it), or any other key the training
reports. ``result("key")`` reads keys that are not identifiers.

Values are numbers or *layer vectors* (one number per activation layer). Arithmetic and
comparisons work element-wise and broadcast numbers over vectors; comparisons give 1 or 0.

NaN policy: a comparison with NaN is false (IEEE); reductions skip NaN layers (all-NaN gives
NaN); ``fraction`` counts NaN as false. Use ``nonfinite(x)`` to test for NaN/Inf explicitly.
A signal missing from a report (e.g. no sampled step, or ``loss_d`` for a student) makes the
expression *absent*: the rule neither holds nor breaks its ``for`` streak on that report. In
``a or b`` an absent side leaves the other side to decide. ``absent(x)`` is 1 where ``x`` is
absent and 0 where it has a value (PromQL's ``absent``): ``a and (absent(x) or x > 0)`` makes a
confirmation by ``x`` optional for trainings that do not report it.
"""

from __future__ import annotations

import fnmatch
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

from heuristics.vocabulary import ROLES

Value = float | dict[str, float] | None

LAYER_SIGNALS = {
    "dead_ratio": "fraction of units never positive in the window",
    "evergreen_ratio": "fraction of units always positive in the window",
    "healthy_ratio": "fraction of units whose activity varies with the input",
    "activation_std": "per-unit std over batch and time, averaged over units",
    "activation_mean": "mean activation",
    "nonfinite_count": "NaN/Inf activation values in the window",
    "saturated_ratio": "recurrent layers: fraction of units pinned near +-1 in the window",
}
MODEL_SIGNALS = {
    "output_power_db": "mean spectral power of the output (dB)",
    "target_power_db": "mean spectral power of the target (dB)",
    "power_loss": "Parallel WaveNet power loss",
    "power_ratio_db": "output over target spectral power (dB)",
}
METRIC_SIGNALS = ROLES  # declared per experiment (heuristics.vocabulary)
# Computed by the engine from the declaration: ``quality`` is the declared validation metric
# signed so that higher is better (``validation`` for mode max, ``-validation`` for mode min),
# so that one rule reads "quality still improving" or "quality regressed" for either mode.
DERIVED_SIGNALS = {
    "quality": "the declared validation metric, signed so that higher is better",
}
SIGNALS = {**LAYER_SIGNALS, **MODEL_SIGNALS, **METRIC_SIGNALS, **DERIVED_SIGNALS}

REDUCTIONS = {"max", "min", "mean", "sum", "count", "fraction", "any", "all"}
# (expr, N reports). ``zscore`` and ``ratio`` compare now with the N reports *before* it:
# ``zscore(x, N)``: (x - median) / robust spread (1.4826 MAD, or 1.2533 mean absolute deviation
# when larger, at least 1e-9), shift-invariant, safe for losses of any sign; ``ratio(x, N)``:
# x / median, only where the median is positive (absent otherwise), for quantities positive by
# nature. Both are absent
# until 3 earlier reports exist. An optional third argument, ``zscore(x, N, K)``, ends the
# baseline K reports earlier (Prometheus's ``offset``): a rule held for K+1 reports then
# compares each of them with the same reports from before the excursion, which the excursion
# cannot inflate.
BASELINES = {"zscore", "ratio"}
# ``peer_zscore(x)``: the robust z-score of ``x`` now against the same expression at the same
# iteration of the experiment's other trials (each one's value at this iteration or up to
# PEER_LAG before; stopped trials count with the values they reported): evidence that a trial
# is an outlier among its siblings, which a population sharing a harmless trait cannot give.
# ``x`` must be computed from one report (no window or history function inside). Absent with
# fewer than MIN_PEERS other trials, and where the engine gives no population (one trial).
# The scale is robust against failing siblings: 1.4826 x the siblings' MAD (a mean absolute
# deviation, which one far-off sibling inflates, would mask a second failing trial), floored
# by the siblings' own report-to-report noise (each sibling's 1.4826 MAD over its last
# PEER_NOISE values of ``x``), of which the *lower median* is taken: a failing sibling's noisy
# series cannot raise it, nor can half of the siblings failing at once. MIN_PEERS is 3, the
# fewest siblings whose median one failing sibling cannot move past a healthy sibling's value
# (with 2, the median is their mean).
PEERS = {"peer_zscore"}
MIN_PEERS = 3
PEER_LAG = 2
PEER_NOISE = 8
WINDOWS = {"avg_over", "min_over", "max_over", "change"} | BASELINES
# over every report of the trial so far; ``first(x)``: x at the first report where it had a
# (non-NaN) value, the trial's starting point (a quality's level before any learning)
HISTORY = {"min_ever", "max_ever", "first"}
ELEMENTWISE = {"abs", "nonfinite", "log10"}
FUNCTIONS = REDUCTIONS | WINDOWS | HISTORY | ELEMENTWISE | PEERS | {"result", "absent"}

# Limits, checked when a rule is loaded, so that a rule that loads also evaluates and pickles
# (a deeper or larger tree hits Python's recursion limit in the evaluator or in pickle).
MAX_CHARS = 4000  # characters of one expression
MAX_DEPTH = 32  # nesting: parentheses, calls, prefix operators, and each operator of a chain
MAX_NODES = 256  # nodes of the tree
MAX_NUMBER_CHARS = 64  # characters of one number
MAX_WINDOW = 10_000  # reports of a window function


class ExprError(ValueError):
    """A syntax or meaning error, with the character offset in the expression."""

    def __init__(self, message: str, pos: int | None = None) -> None:
        super().__init__(message)
        self.pos = pos


# -- tokens -----------------------------------------------------------------------------------
TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<str>"[^"]*"|'[^']*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|==|!=|[<>()+\-*/{},=])
""", re.VERBOSE)
KEYWORDS = {"and", "or", "not"}


@dataclass
class Token:
    kind: str
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m:
            raise ExprError(f"unexpected character {text[pos]!r} at column {pos + 1}", pos)
        kind = m.lastgroup
        if kind != "ws":
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(Token("end", "", pos))
    return tokens


# -- tree ---------------------------------------------------------------------------------------
@dataclass
class Node:
    pos: int = field(default=0, compare=False)
    id: int = field(default=-1, compare=False)  # unique within a rule, set after parsing
    cached: bool = field(default=False, compare=False)  # read back by a window function
    # Set after parsing (``annotate``): the canonical text of the subtree; whether its value
    # depends only on the report it is evaluated at (``local``) or only on the reports' own
    # data within ``lookback`` reports before it (``shared``: no slots of any scope).
    key: str = field(default="", compare=False)
    local: bool = field(default=False, compare=False)
    shared: bool = field(default=False, compare=False)
    lookback: int = field(default=0, compare=False)


@dataclass
class Num(Node):
    value: float = 0.0


@dataclass
class Signal(Node):
    name: str = ""
    layer: str | None = None  # glob over layer names

    def label(self) -> str:
        return f'{self.name}{{layer="{self.layer}"}}' if self.layer else self.name


@dataclass
class Unary(Node):
    op: str = ""
    arg: Node | None = None


@dataclass
class Binary(Node):
    op: str = ""
    left: Node | None = None
    right: Node | None = None


@dataclass
class Call(Node):
    fn: str = ""
    args: list[Any] = field(default_factory=list)  # Nodes, and ints for window sizes


COMPARISONS = {"<", "<=", ">", ">=", "==", "!="}


class Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0  # current nesting, bounded by MAX_DEPTH while parsing

    def nest(self, tok: Token) -> None:
        """One more level of nesting at ``tok``; refuse beyond ``MAX_DEPTH``."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"nested more than {MAX_DEPTH} levels deep at column {tok.pos + 1}; "
                            f"expected at most {MAX_DEPTH} (split the condition into several "
                            "rules)", tok.pos)

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self, text: str | None = None, kind: str | None = None) -> Token:
        tok = self.peek()
        if (text is not None and tok.text != text) or (kind is not None and tok.kind != kind):
            want = repr(text) if text else kind
            got = repr(tok.text) if tok.kind != "end" else "the end"
            raise ExprError(f"expected {want} at column {tok.pos + 1}, got {got}", tok.pos)
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.expr()
        if self.peek().kind != "end":
            tok = self.peek()
            raise ExprError(f"unexpected {tok.text!r} at column {tok.pos + 1}", tok.pos)
        check_size(node)
        for i, n in enumerate(walk(node)):
            n.id = i
        annotate(node)
        for n in walk(node):
            if isinstance(n, Call) and n.fn in PEERS and not n.args[0].local:
                raise ExprError(f"{n.fn} at column {n.pos + 1}: expected an argument computed "
                                "from one report (signals, arithmetic, reductions), got one "
                                "with a window, history or peer function inside", n.pos)
        return node

    def binary(self, ops: tuple[str, ...], operand) -> Node:
        """A left-associative chain ``operand (op operand)*`` for one precedence level."""
        node = operand()
        while self.peek().text in ops:
            tok = self.take()
            node = Binary(pos=tok.pos, op=tok.text, left=node, right=operand())
        return node

    def expr(self) -> Node:
        return self.binary(("or",), self.and_expr)

    def and_expr(self) -> Node:
        return self.binary(("and",), self.not_expr)

    def prefix(self, op: str, operand: Callable[[], Node]) -> Node:
        """``op op ... operand``: a right-nested run of a prefix operator."""
        if self.peek().text == op:
            tok = self.take()
            self.nest(tok)
            node = Unary(pos=tok.pos, op=op, arg=self.prefix(op, operand))
            self.depth -= 1
            return node
        return operand()

    def not_expr(self) -> Node:
        return self.prefix("not", self.comparison)

    def comparison(self) -> Node:
        node = self.sum()
        if self.peek().text in COMPARISONS:
            tok = self.take()
            node = Binary(pos=tok.pos, op=tok.text, left=node, right=self.sum())
            if self.peek().text in COMPARISONS:
                raise ExprError(f"chained comparison at column {self.peek().pos + 1}; use 'and'",
                                self.peek().pos)
        return node

    def sum(self) -> Node:
        return self.binary(("+", "-"), self.product)

    def product(self) -> Node:
        return self.binary(("*", "/"), self.unary)

    def unary(self) -> Node:
        return self.prefix("-", self.primary)

    def primary(self) -> Node:
        tok = self.peek()
        if tok.kind == "num":
            self.take()
            return Num(pos=tok.pos, value=number(tok))
        if tok.text == "(":
            self.take()
            self.nest(tok)
            node = self.expr()
            self.take(")")
            self.depth -= 1
            return node
        if tok.kind == "name" and tok.text not in KEYWORDS:
            self.take()
            if self.peek().text == "(":
                return self.call(tok)
            return self.signal(tok)
        got = repr(tok.text) if tok.kind != "end" else "the end"
        raise ExprError(f"expected a number, a signal or a function at column {tok.pos + 1}, "
                        f"got {got}", tok.pos)

    def signal(self, tok: Token) -> Signal:
        # A name that is no health signal or declared role is a key the training reports
        # itself (checked against the experiment's vocabulary and reports, not here).
        layer = None
        if self.peek().text == "{":
            self.take("{")
            key = self.take(kind="name")
            if key.text != "layer":
                raise ExprError(f"only a layer selector is supported, got {key.text!r} at "
                                f"column {key.pos + 1}", key.pos)
            if tok.text not in LAYER_SIGNALS:
                raise ExprError(f"{tok.text} is not a per-layer signal; it takes no layer "
                                "selector", tok.pos)
            self.take("=")
            layer = self.take(kind="str").text[1:-1]
            self.take("}")
        return Signal(pos=tok.pos, name=tok.text, layer=layer)

    def reports(self, fn: str, what: str, least: int) -> int:
        """A whole number of reports from ``least`` to MAX_WINDOW (a window, an offset)."""
        n = self.take(kind="num")
        number(n)
        if not re.fullmatch(r"\d+", n.text) or not least <= int(n.text) <= MAX_WINDOW:
            raise ExprError(f"{fn}: the {what} must be a whole number of reports from {least} "
                            f"to {MAX_WINDOW}, got {n.text} at column {n.pos + 1}", n.pos)
        return int(n.text)

    def call(self, tok: Token) -> Call:
        fn = tok.text
        if fn not in FUNCTIONS:
            raise ExprError(f"unknown function {fn!r} at column {tok.pos + 1}; known: "
                            f"{', '.join(sorted(FUNCTIONS))}", tok.pos)
        self.take("(")
        if fn == "result":
            key = self.take(kind="str").text[1:-1]
            self.take(")")
            return Call(pos=tok.pos, fn=fn, args=[key])
        self.nest(tok)
        args: list[Any] = [self.expr()]
        self.depth -= 1
        if fn in WINDOWS:
            self.take(",")
            args.append(self.reports(fn, "window", 1))
            if fn in BASELINES and self.peek().text == ",":
                self.take(",")
                offset = self.reports(fn, "offset", 0)
                if offset:  # 0 is the default: the same canonical text as without it
                    args.append(offset)
        self.take(")")
        return Call(pos=tok.pos, fn=fn, args=args)


def number(tok: Token) -> float:
    """The value of a number token; refuse numbers too long to read or beyond a float."""
    if len(tok.text) > MAX_NUMBER_CHARS:
        raise ExprError(f"a number of {len(tok.text)} characters at column {tok.pos + 1}; "
                        f"expected at most {MAX_NUMBER_CHARS}", tok.pos)
    value = float(tok.text)
    if not math.isfinite(value):
        raise ExprError(f"the number at column {tok.pos + 1} is beyond the float range; "
                        "expected a finite number (use nonfinite(x) to test for NaN/Inf)", tok.pos)
    return value


def check_size(node: Node) -> None:
    """Refuse trees deeper than ``MAX_DEPTH`` or larger than ``MAX_NODES`` (iteratively: a
    chain of operators is deep without any parenthesis)."""
    stack, count = [(node, 1)], 0
    while stack:
        n, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise ExprError(f"nested more than {MAX_DEPTH} levels deep at column {n.pos + 1} "
                            "(each operator of an and/or/+ chain is one level); expected at "
                            f"most {MAX_DEPTH} (split the condition into several rules)", n.pos)
        if count > MAX_NODES:
            raise ExprError(f"more than {MAX_NODES} terms and operators; expected at most "
                            f"{MAX_NODES} (split the condition into several rules)", n.pos)
        stack.extend((child, depth + 1) for child in children(node=n))


def children(node: Node) -> list[Node]:
    if isinstance(node, Unary):
        return [node.arg]
    if isinstance(node, Binary):
        return [node.left, node.right]
    if isinstance(node, Call):
        return [a for a in node.args if isinstance(a, Node)]
    return []


def parse(text: str) -> Node:
    """Parse an expression; raises ``ExprError`` with a column on any problem."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError("expected a non-empty expression string")
    if len(text) > MAX_CHARS:
        raise ExprError(f"{len(text)} characters; expected an expression of at most {MAX_CHARS} "
                        "(split the condition into several rules)")
    return Parser(text).parse()


def annotate(node: Node) -> None:
    """Set ``key``, ``local``, ``shared``, ``lookback`` and ``cached`` on every node.

    A window over a ``local`` input recomputes the input at earlier reports from their own
    data (memoised per report), so it needs no slot; only inputs that are not local (a
    running minimum, a nested window) are cached in the rule's scope.
    """
    kids = children(node)
    for child in kids:
        annotate(child)
    if isinstance(node, Num):
        node.key = repr(node.value)
    elif isinstance(node, Signal):
        node.key = node.label()
    elif isinstance(node, Unary):
        node.key = f"({node.op} {node.arg.key})"
    elif isinstance(node, Binary):
        node.key = f"({node.left.key} {node.op} {node.right.key})"
    elif isinstance(node, Call):
        args = (a.key if isinstance(a, Node) else repr(a) for a in node.args)
        node.key = f"{node.fn}({', '.join(args)})"
    window = isinstance(node, Call) and node.fn in WINDOWS
    history = isinstance(node, Call) and node.fn in (HISTORY | PEERS)  # not from own data
    node.local = not window and not history and all(k.local for k in kids)
    if window:
        inner = node.args[0]
        inner.cached = not inner.local
        node.shared = inner.local
        node.lookback = span(node)
    else:
        node.shared = not history and all(k.shared or k.local for k in kids)
        node.lookback = max([k.lookback for k in kids], default=0)


def walk(node: Node):
    """Every node of the tree, parents before children."""
    yield node
    if isinstance(node, Unary):
        yield from walk(node.arg)
    elif isinstance(node, Binary):
        yield from walk(node.left)
        yield from walk(node.right)
    elif isinstance(node, Call):
        for a in node.args:
            if isinstance(a, Node):
                yield from walk(a)


def signals_of(node: Node) -> list[Signal]:
    return [n for n in walk(node) if isinstance(n, Signal)]


def offset(node: Call) -> int:
    """Reports a baseline ends before the current one's predecessor (0 without one)."""
    return node.args[2] if len(node.args) > 2 else 0


def span(node: Call) -> int:
    """Earlier reports a window call reads: its window plus its offset."""
    return node.args[1] + offset(node)


def max_window(node: Node) -> int:
    return max([1] + [span(n) for n in walk(node) if isinstance(n, Call) and n.fn in WINDOWS])


def comparisons(node: Node) -> list[Binary]:
    """Every comparison of the tree, in reading order."""
    return [n for n in walk(node) if isinstance(n, Binary) and n.op in COMPARISONS]


# -- evaluation ---------------------------------------------------------------------------------
STATE_VERSION = 2  # of Report.to_dict: caches keyed by scope (rule), then node id


class Report:
    """One reported result as the evaluator sees it.

    ``cache`` and ``ever`` hold the state of window and history functions, keyed by *scope*
    and node id. Node ids are unique only within one tree, so every tree evaluated over the
    same reports needs a scope of its own (the engine uses the rule's name): two rules never
    read each other's slots.
    """

    def __init__(self, iteration: int, time_s: float, layers: dict[str, dict[str, float]],
                 scalars: dict[str, float]) -> None:
        self.iteration, self.time_s = iteration, time_s
        self.layers, self.scalars = layers, scalars
        # scope -> node id -> value at this report (window inputs)
        self.cache: dict[str, dict[int, Value]] = {}
        # scope -> node id -> running min/max up to this report
        self.ever: dict[str, dict[int, Value]] = {}
        # Values of ``local`` and ``shared`` subtrees at this report, by canonical text (and
        # the first report a ``shared`` one reads): the same for every rule, never saved.
        self.memo: dict[Any, Value] = {}
        # ``peer_zscore`` inputs at this report, by canonical text (what other trials compare
        # with), and where the other trials' values come from (set by the engine, not saved).
        self.peer: dict[str, Value] = {}
        # key -> [(a sibling's value, its own noise at that report)]
        self.peers: Callable[[str], list[tuple[Value, Value]]] | None = None
        # The report's place in its trial (set by the engine: one more than the report before
        # it) and the running state of long windows at it (``_sliding``; never saved, rebuilt
        # from the reports when missing).
        self.seq: int | None = None
        self.slide: dict[tuple[str, int, str], Any] = {}

    def to_dict(self) -> dict[str, Any]:
        out = {"v": STATE_VERSION, "iteration": self.iteration, "time_s": self.time_s,
               "layers": self.layers, "scalars": self.scalars,
               "cache": _slots_out(self.cache), "ever": _slots_out(self.ever)}
        if self.peer:
            out["peer"] = self.peer
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        r = cls(d["iteration"], d["time_s"], d["layers"], d["scalars"])
        r.load_slots(d)
        return r

    def load_slots(self, d: dict[str, Any]) -> None:
        """Caches of a ``to_dict``; those of an older format (ids shared by every rule, which
        mixed rules' values) are dropped."""
        if d.get("v") == STATE_VERSION:
            self.cache, self.ever = _slots_in(d["cache"]), _slots_in(d["ever"])
        self.peer = dict(d.get("peer") or {})


def _slots_out(slots: dict[str, dict[int, Value]]) -> dict[str, dict[str, Value]]:
    return {scope: {str(k): v for k, v in values.items()} for scope, values in slots.items()}


def _slots_in(data: dict[str, dict[str, Value]]) -> dict[str, dict[int, Value]]:
    return {scope: {int(k): v for k, v in values.items()} for scope, values in data.items()}


def _nan_safe(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def _truth(x: float) -> bool:
    return not math.isnan(x) and x != 0.0


def _map(f: Callable[[float], float], v: Value) -> Value:
    if v is None:
        return None
    if isinstance(v, dict):
        return {k: f(x) for k, x in v.items()}
    return f(v)


def _zip(f: Callable[[float, float], float], a: Value, b: Value) -> Value:
    if a is None or b is None:
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: f(a[k], b[k]) for k in a if k in b}
    if isinstance(a, dict):
        return {k: f(x, b) for k, x in a.items()}
    if isinstance(b, dict):
        return {k: f(a, x) for k, x in b.items()}
    return f(a, b)


def _div(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
    return a / b


ARITH = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": _div}
COMPARE = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
           ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}


def _reduce(fn: str, v: Value) -> Value:
    if v is None:
        return None
    values = list(v.values()) if isinstance(v, dict) else [v]
    if fn == "count":
        return float(len(values))
    if not values:
        return None
    if fn == "fraction":
        return sum(_truth(x) for x in values) / len(values)
    if fn == "any":
        return float(any(_truth(x) for x in values))
    if fn == "all":
        return float(all(_truth(x) for x in values))
    finite = _nan_safe(values)
    if not finite:
        return math.nan
    if fn == "max":
        return max(finite)
    if fn == "min":
        return min(finite)
    if fn == "sum":
        return float(sum(finite))
    return sum(finite) / len(finite)  # mean


def _combine_ever(fn: str, previous: Value, current: Value) -> Value:
    if previous is None:
        return current
    if current is None:
        return previous
    if fn == "first":  # the earlier value stays; a NaN or a layer not seen before is filled
        if isinstance(previous, dict) and isinstance(current, dict):
            return {**current, **{k: v for k, v in previous.items() if not math.isnan(v)}}
        if isinstance(previous, dict) or isinstance(current, dict):
            return previous
        return current if math.isnan(previous) else previous
    pick = min if fn == "min_ever" else max

    def f(a: float, b: float) -> float:
        if math.isnan(a):
            return b
        if math.isnan(b):
            return a
        return pick(a, b)

    return _zip(f, previous, current)


def evaluate(node: Node, history: list[Report], scope: str = "") -> Value:
    """Value of ``node`` at the last report of ``history`` (earlier reports hold caches).

    ``scope`` names the tree's slots in the reports' caches: trees evaluated over the same
    reports need different scopes (see ``Report``).
    """
    if node.local or node.shared:
        if isinstance(node, Num):
            return node.value
        now = history[-1]
        key = node.key if node.local else (
            node.key, history[-min(len(history), node.lookback + 1)].iteration)
        memo = now.memo
        if key in memo:
            value = memo[key]
        else:
            value = memo[key] = _eval(node, history, scope)
    else:
        value = _eval(node, history, scope)
    if node.cached:
        history[-1].cache.setdefault(scope, {})[node.id] = value
    return value


def _inputs(node: Node, history: list[Report], start: int, end: int | None,
            scope: str) -> list[Value]:
    """The present (not None) values of window input ``node`` at ``history[start:end]``, read
    as ``_past`` reads each (the memo of a local input first): one loop, no call per report."""
    out: list[Value] = []
    if node.local and not isinstance(node, Num):
        key = node.key
        for r in history[start:end]:
            memo = r.memo
            v = memo[key] if key in memo else evaluate(node, [r], scope)
            if v is not None:
                out.append(v)
    elif node.local:
        out = [node.value] * len(history[start:end])
    else:
        nid = node.id
        for r in history[start:end]:
            v = r.cache.get(scope, _NO_SLOTS).get(nid)
            if v is not None:
                out.append(v)
    return out


_NO_SLOTS: dict[int, Value] = {}


def _past(node: Node, history: list[Report], i: int, scope: str) -> Value:
    """The value of window input ``node`` at ``history[i]``: recomputed from that report's
    own data when the input is local, else read from the rule's slot."""
    if node.local:
        return evaluate(node, [history[i]], scope)
    return history[i].cache.get(scope, {}).get(node.id)


def _eval(node: Node, history: list[Report], scope: str) -> Value:
    now = history[-1]
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Signal):
        if node.name in LAYER_SIGNALS:
            vec = {layer: sig[node.name] for layer, sig in now.layers.items()
                   if node.name in sig and (node.layer is None
                                            or fnmatch.fnmatchcase(layer, node.layer))}
            return vec or None
        return now.scalars.get(node.name)
    if isinstance(node, Unary):
        arg = evaluate(node.arg, history, scope)
        if node.op == "-":
            return _map(lambda x: -x, arg)
        return _map(lambda x: float(not _truth(x)), arg)
    if isinstance(node, Binary):
        a, b = evaluate(node.left, history, scope), evaluate(node.right, history, scope)
        if node.op in ARITH:
            return _zip(ARITH[node.op], a, b)
        if node.op in COMPARE:
            op = COMPARE[node.op]
            return _zip(lambda x, y: float(op(x, y)), a, b)
        if node.op == "and":
            return _zip(lambda x, y: float(_truth(x) and _truth(y)), a, b)
        if a is None or b is None:  # "or": an absent side leaves the other to decide
            return a if b is None else b
        return _zip(lambda x, y: float(_truth(x) or _truth(y)), a, b)
    assert isinstance(node, Call)
    fn = node.fn
    if fn == "result":
        return now.scalars.get(node.args[0])
    inner = evaluate(node.args[0], history, scope)
    if fn in PEERS:
        key = node.args[0].key
        now.peer[key] = inner
        others = [p for p in (now.peers(key) if now.peers else []) if p[0] is not None]
        if len(others) < MIN_PEERS:
            return None
        return peer_zscore(inner, others)
    if fn == "absent":
        return 1.0 if inner is None else 0.0
    if fn in REDUCTIONS:
        return _reduce(fn, inner)
    if fn == "abs":
        return _map(abs, inner)
    if fn == "log10":
        return _map(lambda x: math.log10(x) if x > 0 else (-math.inf if x == 0 else math.nan),
                    inner)
    if fn == "nonfinite":
        return _map(lambda x: float(not math.isfinite(x)), inner)
    if fn in HISTORY:
        previous = history[-2].ever.get(scope, {}).get(node.id) if len(history) > 1 else None
        value = _combine_ever(fn, previous, inner)
        now.ever.setdefault(scope, {})[node.id] = value
        return value
    n = node.args[1]
    arg = node.args[0]
    size = len(history)
    if fn == "change":  # now minus n reports ago
        if size < n + 1:
            return None
        return _zip(lambda a, b: a - b, inner, _past(arg, history, -n - 1, scope))
    if fn in BASELINES:
        end = -1 - offset(node)  # the baseline stops before it
        before = _inputs(arg, history, -min(n - end, size), end, scope)
        return _baseline(fn, inner, before)
    if n > SLIDING_FROM:
        value = _sliding(fn, node, inner, history, scope)
        if value is not _UNKNOWN:
            return value
    past = _inputs(arg, history, -min(n, size), None, scope)
    if not past:
        return None
    if dict not in set(map(type, past)):  # scalars: the same left fold, in C
        total = reduce(operator.add if fn == "avg_over" else min if fn == "min_over" else max,
                       past)
        return total / len(past) if fn == "avg_over" else total
    if fn == "avg_over":
        total = past[0]
        for p in past[1:]:
            total = _zip(lambda a, b: a + b, total, p)
        return _map(lambda x: x / len(past), total)
    pick = min if fn == "min_over" else max
    out = past[0]
    for p in past[1:]:
        out = _zip(lambda a, b: pick(a, b), out, p)
    return out


# -- long windows, incrementally ------------------------------------------------------------
# A window of more than SLIDING_FROM reports over scalar inputs costs the same at every report,
# however long the history (nested windows included): ``avg_over`` from running sums (exact:
# integers in units of 2**-1074, so the mean is the correctly rounded mean of the window),
# ``min_over``/``max_over`` from running folds over blocks of the window's size (van Herk /
# Gil-Werman: a window is the end of one block and the start of the next), the same value the
# left fold gives, bit for bit, NaN included. Shorter windows, vector inputs and reports
# without their place in the trial (``seq``) take the plain fold.
SLIDING_FROM = 64
_UNKNOWN = object()
_SCALE = 1 << 1074  # 2**-1074 is the least float: every finite float is a whole multiple


def _contrib(v: Value) -> tuple[int, int, int, int, int, int]:
    """One input to the running sums: (sum in 2**-1074, present, NaN, +inf, -inf, vectors)."""
    if v is None:
        return (0, 0, 0, 0, 0, 0)
    if type(v) is dict:
        return (0, 1, 0, 0, 0, 1)
    if v != v:
        return (0, 1, 1, 0, 0, 0)
    if v in (math.inf, -math.inf):
        return (0, 1, 0, int(v > 0), int(v < 0), 0)
    num, den = float(v).as_integer_ratio()
    return (num * (_SCALE // den), 1, 0, 0, 0, 0)


def _fold(fn: str, a: tuple, b: tuple) -> tuple:
    """Two folds of ``min_over``/``max_over`` inputs, ``a`` the earlier: (first present value,
    the least (or greatest) non-NaN value, the earliest on ties; any vector)."""
    first = a[0] if a[0] is not None else b[0]
    if a[1] is None:
        best = b[1]
    elif b[1] is None:
        best = a[1]
    else:
        best = b[1] if (b[1] < a[1] if fn == "min_over" else b[1] > a[1]) else a[1]
    return (first, best, a[2] or b[2])


def _one(v: Value) -> tuple:
    if v is None:
        return (None, None, False)
    if type(v) is dict:
        return (v, None, True)
    return (v, None if v != v else v, False)


def _sliding(fn: str, node: Call, inner: Value, history: list[Report], scope: str) -> Any:
    """``node`` (a long ``avg_over``/``min_over``/``max_over``) at ``history[-1]`` from the
    running state of its reports; ``_UNKNOWN`` when only the plain fold can tell."""
    size, n, arg = len(history), node.args[1], node.args[0]
    first, last = history[0].seq, history[-1].seq
    if first is None or last is None or last - first != size - 1:
        return _UNKNOWN
    s = size - min(n, size)  # the window: history[s:]

    def value(i: int) -> Value:
        return inner if i == size - 1 else _past(arg, history, i, scope)

    if fn == "avg_over":
        key = (scope, node.id, "sum")

        def ensure(i: int) -> tuple:
            j = i
            while j >= 0 and key not in history[j].slide:
                j -= 1
            total = history[j].slide[key][0] if j >= 0 else (0,) * 6
            for k in range(j + 1, i + 1):
                c = _contrib(value(k))
                total = tuple(x + y for x, y in zip(total, c))
                history[k].slide[key] = (total, c)
            return history[i].slide[key]

        end, _ = ensure(size - 1)
        start, c = ensure(s)
        total, count, nan, pinf, ninf, vectors = (e - b + x for e, b, x in zip(end, start, c))
        if vectors:
            return _UNKNOWN
        if not count:
            return None
        if nan or (pinf and ninf):
            return math.nan
        if pinf or ninf:
            return math.inf if pinf else -math.inf
        return total / (count * _SCALE)

    pkey, skey = (scope, node.id, "prefix"), (scope, node.id, "suffix")

    def prefix(i: int) -> tuple:  # the fold from the block's first report in view to i
        block, j = history[i].seq // n, i
        while pkey not in history[j].slide and j > 0 and history[j - 1].seq // n == block:
            j -= 1
        if pkey in history[j].slide:
            state, origin = history[j].slide[pkey]
        else:
            state, origin = _one(value(j)), history[j].seq
            history[j].slide[pkey] = (state, origin)
        for k in range(j + 1, i + 1):
            state = _fold(fn, state, _one(value(k)))
            history[k].slide[pkey] = (state, origin)
        return history[i].slide[pkey]

    state, origin = prefix(size - 1)
    if history[s].seq // n != last // n:  # the end of the block before, then this one's start
        if origin != last // n * n:
            return _UNKNOWN
        block_end = s + (n - 1 - history[s].seq % n)
        cached = history[s].slide.get(skey)
        if cached is None or cached[1] is not history[block_end]:
            tail = _one(value(block_end))
            history[block_end].slide[skey] = (tail, history[block_end])
            for k in range(block_end - 1, s - 1, -1):
                tail = _fold(fn, _one(value(k)), tail)
                history[k].slide[skey] = (tail, history[block_end])
            cached = history[s].slide[skey]
        state = _fold(fn, cached[0], state)
    elif origin != history[s].seq:
        return _UNKNOWN
    head, best, vectors = state
    if vectors:
        return _UNKNOWN
    if head is None:
        return None
    return head if head != head else best


MIN_BASELINE = 3  # earlier reports a baseline needs


def _baseline(fn: str, now: Value, before: list[Value]) -> Value:
    """``zscore`` or ``ratio`` of ``now`` against the earlier values ``before`` (per layer for
    vectors; NaN earlier values are skipped)."""
    if now is None:
        return None

    def one(x: float, series: list[float]) -> float | None:
        series = [v for v in series if not math.isnan(v)]
        if len(series) < MIN_BASELINE:
            return None
        series.sort()
        mid = len(series) // 2
        median = series[mid] if len(series) % 2 else (series[mid - 1] + series[mid]) / 2
        if fn == "ratio":
            return x / median if median > 0 else None
        deviations = sorted(abs(v - median) for v in series)
        mad = deviations[mid] if len(series) % 2 else (deviations[mid - 1] + deviations[mid]) / 2
        mean_dev = sum(deviations) / len(deviations)
        return (x - median) / max(1.4826 * mad, 1.2533 * mean_dev, 1e-9)

    if isinstance(now, dict):
        out = {}
        for layer, x in now.items():
            value = one(x, [b[layer] for b in before if isinstance(b, dict) and layer in b])
            if value is not None:
                out[layer] = value
        return out or None
    value = one(now, [b for b in before if not isinstance(b, dict)])
    return value


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def robust_spread(values: list[float]) -> float | None:
    """1.4826 x the median absolute deviation of ``values`` (NaN skipped; None with fewer than
    MIN_BASELINE)."""
    values = [v for v in values if not math.isnan(v)]
    if len(values) < MIN_BASELINE:
        return None
    median = _median(values)
    return 1.4826 * _median([abs(v - median) for v in values])


def noise(series: list[Value]) -> Value:
    """A trial's own report-to-report noise of one ``peer_zscore`` input: ``robust_spread``
    of its values (per layer for vectors); None while too few."""
    if any(isinstance(v, dict) for v in series):
        layers: dict[str, list[float]] = {}
        for v in series:
            if isinstance(v, dict):
                for layer, x in v.items():
                    layers.setdefault(layer, []).append(x)
        out = {layer: s for layer, xs in layers.items() if (s := robust_spread(xs)) is not None}
        return out or None
    return robust_spread([v for v in series if v is not None])


def peer_zscore(now: Value, others: list[tuple[Value, Value]]) -> Value:
    """Robust z-score of ``now`` against the siblings' values ``others`` ((value, noise)
    pairs): (x - median) / max(1.4826 MAD, lower median of the siblings' noise, 1e-9); absent
    with fewer than MIN_PEERS finite sibling values or before any sibling has a noise (per
    layer for vectors)."""
    if now is None:
        return None

    def one(x: float, pairs: list[tuple[float, float | None]]) -> float | None:
        values = [v for v, _ in pairs if not math.isnan(v)]
        if len(values) < MIN_PEERS:
            return None
        median = _median(values)
        mad = 1.4826 * _median([abs(v - median) for v in values])
        floors = sorted(n for _, n in pairs if n is not None and not math.isnan(n))
        if not floors:  # no sibling has PEER_NOISE's first 3 values yet: no floor known
            return None
        return (x - median) / max(mad, floors[(len(floors) - 1) // 2], 1e-9)

    if isinstance(now, dict):
        out = {}
        for layer, x in now.items():
            pairs = [(v[layer], n.get(layer) if isinstance(n, dict) else None)
                     for v, n in others if isinstance(v, dict) and layer in v]
            value = one(x, pairs)
            if value is not None:
                out[layer] = value
        return out or None
    return one(now, [(v, n if not isinstance(n, dict) else None) for v, n in others
                     if not isinstance(v, dict)])


def truth(value: Value) -> bool | None:
    """A rule's condition: a number is true when non-zero; a vector when any layer is true."""
    if value is None:
        return None
    if isinstance(value, dict):
        return any(_truth(x) for x in value.values()) if value else None
    return _truth(value)
