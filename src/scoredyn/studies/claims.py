"""Claims as data: what a paper says, where, what is measured, and the criterion that decides.

How to declare a claim: in the study's table ``studies/<study>.claims.toml`` (data, so
docs/studies.md is generated from it without running anything), one ``[[claim]]`` entry each::

    [[claim]]
    id = "kim.2e"
    statement = "Samples of the optimum collapse onto training points"
    source = ["Kim 2026", "§4.2", "Thm 4.4"]   # paper, section, optional equation / theorem
    kind = "paper"                             # "paper" | "extension" | "open question"
    quantities = ["copy_fraction", "nfe"]
    definitions = "copy_fraction = share of samples within {K_SIGMA:g} sigma_min of a training point"
    supported = "copy_fraction >= COPY"        # optional: not_supported, inconclusive_if (+ why)
    on_networks = false                        # true: the claim rests on trained networks (quality gate)

A condition compares a measured quantity (lower case) with a number, a threshold of
:mod:`scoredyn.studies.thresholds` (upper case) or another quantity, ``scale * q + offset``
(``copy_last > copy_first + COPY_RISE``); ``and`` / ``or`` / parentheses combine conditions. Texts
may name thresholds as ``{NAME:g}`` and the table's ``[text]`` entries as ``{NAME}``. The study loads
its table with ``REGISTRY = load_registry("kim")`` and judges a claim after measuring::

    claim = REGISTRY["kim.2e"].judge({"copy_fraction": 0.97, "nfe": 212}, networks=[gate_a, gate_b])

``judge`` checks that every declared quantity was measured, then: any network that fails its
quality gate (:mod:`scoredyn.studies.gate`) makes the claim "inconclusive (the network does not
sample the data: ...)"; otherwise the criterion decides and writes its reason. A criterion is built
from conditions (``at_most``, ``at_least``, ``below``, ``above``, ``all_of``, ``any_of``) on named
quantities, compared with a number from :mod:`scoredyn.studies.thresholds` or with another
quantity (``ref("copy_first", offset=0.05)``). Its ``text`` is generated from the conditions and is
what the report and docs/studies.md print, verbatim.

How to declare a network and its gate: see :mod:`scoredyn.studies.gate` (``judge_network``) and
register the result with ``ctx.network(gate)`` (:class:`scoredyn.studies.stages.Context`); pass the
``GateResult`` objects a claim rests on to ``ClaimSpec.judge(..., networks=[...])``.
"""

from __future__ import annotations

import ast
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional, Sequence, Union

if TYPE_CHECKING:
    from .gate import GateResult
    from .report import Claim

Kind = Literal["paper", "extension", "open question"]
KINDS: tuple[str, ...] = ("paper", "extension", "open question")
VERDICTS: tuple[str, ...] = ("supported", "not supported", "inconclusive")
NOT_SAMPLING = "the network does not sample the data"


def _num(v: Any) -> str:
    """A threshold as printed in criterion text (shortest exact form)."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e6):
        return str(int(v))
    t = f"{v:g}"
    return t.replace("e-0", "e-").replace("e+0", "e+")


def _value(m: Mapping[str, Any], q: str) -> Optional[float]:
    """The measured number ``q``, or ``None`` when it is missing, not a number or not finite."""
    v = m.get(q)
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(float(v)):
        return float(v)
    return None


@dataclass(frozen=True)
class Source:
    """Where a paper states a claim: paper, section and (optional) equation / theorem."""

    paper: str
    section: str
    equation: str = ""

    def __str__(self) -> str:
        return ", ".join(p for p in (self.paper + (" " + self.section if self.section else ""), self.equation) if p)


@dataclass(frozen=True)
class Ref:
    """Another measured quantity on the right-hand side of a condition: ``scale * q + offset``."""

    quantity: str
    scale: float = 1.0
    offset: float = 0.0

    def value(self, m: Mapping[str, Any]) -> Optional[float]:
        v = _value(m, self.quantity)
        return None if v is None else self.scale * v + self.offset

    @property
    def text(self) -> str:
        s = self.quantity if self.scale == 1.0 else f"{_num(self.scale)} x {self.quantity}"
        if self.offset:
            s += f" {'+' if self.offset > 0 else '-'} {_num(abs(self.offset))}"
        return s

    @property
    def quantities(self) -> tuple[str, ...]:
        return (self.quantity,)


def ref(quantity: str, scale: float = 1.0, offset: float = 0.0) -> Ref:
    """``scale * quantity + offset`` as the right-hand side of a condition."""
    return Ref(quantity, float(scale), float(offset))


_OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, ">": lambda a, b: a > b,
        "==": lambda a, b: a == b}


@dataclass(frozen=True)
class Cond:
    """``quantity op rhs`` (rhs a number or a :class:`Ref`)."""

    quantity: str
    op: str
    rhs: Union[float, Ref]

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"condition operator {self.op!r} is not one of {sorted(_OPS)}")

    def holds(self, m: Mapping[str, Any]) -> Optional[bool]:
        a = _value(m, self.quantity)
        b = self.rhs.value(m) if isinstance(self.rhs, Ref) else float(self.rhs)
        return None if a is None or b is None else bool(_OPS[self.op](a, b))

    @property
    def text(self) -> str:
        return f"{self.quantity} {self.op} {self.rhs.text if isinstance(self.rhs, Ref) else _num(self.rhs)}"

    @property
    def quantities(self) -> tuple[str, ...]:
        return (self.quantity,) + (self.rhs.quantities if isinstance(self.rhs, Ref) else ())

    def shown(self, m: Mapping[str, Any]) -> str:
        """The condition with its measured values, for a verdict's reason: ``q = 1.2 <= 1.5`` when it holds,
        ``q = 1.8, not <= 1.5`` when it does not."""
        a = _value(m, self.quantity)
        b = self.rhs.value(m) if isinstance(self.rhs, Ref) else float(self.rhs)
        fa = "n/a" if a is None else f"{a:.4g}"
        fb = "n/a" if b is None else f"{b:.4g}"
        return f"{self.quantity} = {fa} {self.op} {fb}" if self.holds(m) else f"{self.quantity} = {fa}, not {self.op} {fb}"


@dataclass(frozen=True)
class Group:
    """All (``how="all"``) or any (``how="any"``) of several conditions."""

    how: str
    parts: tuple[Union[Cond, "Group"], ...]

    def holds(self, m: Mapping[str, Any]) -> Optional[bool]:
        vals = [p.holds(m) for p in self.parts]
        if self.how == "all":
            if any(v is False for v in vals):
                return False
            return None if any(v is None for v in vals) else True
        if any(v is True for v in vals):
            return True
        return None if any(v is None for v in vals) else False

    @property
    def text(self) -> str:
        joiner = " and " if self.how == "all" else " or "
        return joiner.join(f"({p.text})" if isinstance(p, Group) else p.text for p in self.parts)

    @property
    def quantities(self) -> tuple[str, ...]:
        return tuple(q for p in self.parts for q in p.quantities)

    def shown(self, m: Mapping[str, Any]) -> str:
        return "; ".join(p.shown(m) for p in self.parts)


Test = Union[Cond, Group]


def at_most(q: str, rhs: Union[float, Ref]) -> Cond:
    return Cond(q, "<=", rhs)


def at_least(q: str, rhs: Union[float, Ref]) -> Cond:
    return Cond(q, ">=", rhs)


def below(q: str, rhs: Union[float, Ref]) -> Cond:
    return Cond(q, "<", rhs)


def above(q: str, rhs: Union[float, Ref]) -> Cond:
    return Cond(q, ">", rhs)


def all_of(*parts: Test) -> Group:
    return Group("all", tuple(parts))


def any_of(*parts: Test) -> Group:
    return Group("any", tuple(parts))


@dataclass(frozen=True)
class Outcome:
    """A verdict and the reason the criterion gives for it."""

    verdict: str
    reason: str


@dataclass(frozen=True)
class Criterion:
    """Decides a verdict from measured quantities and writes its own text.

    Checked in order: ``inconclusive_if`` (the measurement cannot decide; ``why`` says why), then
    ``supported``, then ``not_supported`` (when absent, everything not supported is "not
    supported"; when present, what is neither is "inconclusive"). A condition that cannot be
    evaluated (a missing or non-finite quantity) gives "inconclusive".
    """

    supported: Test
    not_supported: Optional[Test] = None
    inconclusive_if: Optional[Test] = None
    why: str = ""
    definitions: str = ""  # what the quantities mean, printed before the rule

    @property
    def text(self) -> str:
        parts = []
        if self.definitions:
            parts.append(self.definitions)
        if self.inconclusive_if is not None:
            parts.append(f"inconclusive if {self.inconclusive_if.text}" + (f" ({self.why})" if self.why else ""))
        parts.append(f"supported if {self.supported.text}")
        if self.not_supported is not None:
            parts.append(f"not supported if {self.not_supported.text}")
            parts.append("otherwise inconclusive")
        else:
            parts.append("otherwise not supported")
        return "; ".join(parts)

    @property
    def quantities(self) -> tuple[str, ...]:
        tests = [t for t in (self.inconclusive_if, self.supported, self.not_supported) if t is not None]
        return tuple(dict.fromkeys(q for t in tests for q in t.quantities))

    def judge(self, m: Mapping[str, Any]) -> Outcome:
        missing = [q for q in self.quantities if _value(m, q) is None]
        if self.inconclusive_if is not None and self.inconclusive_if.holds(m):
            return Outcome("inconclusive", f"{self.why or 'cannot decide'}: {self.inconclusive_if.shown(m)}")
        sup = self.supported.holds(m)
        if sup:
            return Outcome("supported", self.supported.shown(m))
        if self.not_supported is None:
            if sup is None:
                return Outcome("inconclusive", f"not measured: {', '.join(missing)}")
            return Outcome("not supported", f"fails: {self.supported.shown(m)}")
        ns = self.not_supported.holds(m)
        if ns:
            return Outcome("not supported", self.not_supported.shown(m))
        if sup is None or ns is None:
            return Outcome("inconclusive", f"not measured: {', '.join(missing)}")
        return Outcome("inconclusive", f"neither bound holds: {self.supported.shown(m)}; {self.not_supported.shown(m)}")


@dataclass(frozen=True)
class ClaimSpec:
    """One claim, declared once: the report row, its criterion and the docs table come from here."""

    id: str
    statement: str
    source: Source
    kind: str
    quantities: tuple[str, ...]
    criterion: Criterion
    on_networks: bool = False
    notes: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.id}: kind {self.kind!r} is not one of {KINDS}")
        unknown = [q for q in self.criterion.quantities if q not in self.quantities]
        if unknown:
            raise ValueError(f"claim {self.id}: the criterion uses {unknown}, which are not among its quantities "
                             f"{list(self.quantities)}")

    def judge(self, measured: Mapping[str, Any], networks: Sequence["GateResult"] = (), note: str = "") -> "Claim":
        """The report row: the verdict from the networks' gates and the criterion, with its reason."""
        from .report import Claim

        missing = [q for q in self.quantities if q not in measured]
        if missing:
            raise ValueError(f"claim {self.id}: quantities {missing} were declared but not measured")
        if self.on_networks and not networks:
            raise ValueError(f"claim {self.id} rests on trained networks; pass their gate results")
        if not self.on_networks and networks:
            raise ValueError(f"claim {self.id} is declared on analytic models only but got networks")
        failing = [g for g in networks if not g.passes]
        if failing:
            out = Outcome("inconclusive", f"{NOT_SAMPLING}: " + "; ".join(f"{g.name}: {g.reason}" for g in failing))
        else:
            out = self.criterion.judge(measured)
        return Claim(
            id=self.id, claim=self.statement, reference=str(self.source), measured=dict(measured),
            criterion=self.criterion.text, verdict=out.verdict, note=note, kind=self.kind,
            networks=[g.name for g in networks], reason=out.reason,
        )


@dataclass
class Registry:
    """The declared claims of a study, in report order (ids unique)."""

    study: str
    claims: list[ClaimSpec] = field(default_factory=list)

    def add(self, spec: ClaimSpec) -> ClaimSpec:
        if any(c.id == spec.id for c in self.claims):
            raise ValueError(f"claim id {spec.id!r} is declared twice")
        if not spec.id.startswith(self.study + "."):
            raise ValueError(f"claim id {spec.id!r} must start with {self.study + '.'!r}")
        self.claims.append(spec)
        return spec

    def __getitem__(self, cid: str) -> ClaimSpec:
        for c in self.claims:
            if c.id == cid:
                return c
        raise KeyError(cid)


# ------------------------------------------------------------------------------ the claim tables

_CLAIM_KEYS = {"id", "statement", "source", "kind", "quantities", "definitions", "supported", "not_supported",
               "inconclusive_if", "why", "on_networks", "notes"}
_COMPARE = {ast.LtE: "<=", ast.GtE: ">=", ast.Lt: "<", ast.Gt: ">"}
_ARITH = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
          ast.Div: lambda a, b: a / b}


def _thresholds() -> dict[str, Any]:
    from . import thresholds

    return {k: v for k, v in vars(thresholds).items() if k.isupper()}


class _Parser:
    """A condition string (``"copy_min >= COPY and (a < b or c > 2 * d + COPY_RISE)"``) as a :data:`Test`.

    Python's ``ast`` reads the expression; nothing is evaluated: only comparisons, ``and`` / ``or``,
    numbers, threshold names (upper case), quantity names (not all upper case), ``+ - * /`` and ``NAME[i]``."""

    def __init__(self, where: str, constants: Mapping[str, Any]) -> None:
        self.where, self.constants = where, constants

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.where}: {what}")

    def test(self, text: str) -> Test:
        try:
            tree = ast.parse(text, mode="eval").body
        except SyntaxError as e:
            raise self.fail(f"cannot read the condition {text!r} ({e.msg})") from None
        return self._test(tree)

    def _test(self, n: ast.expr) -> Test:
        if isinstance(n, ast.BoolOp):
            return Group("all" if isinstance(n.op, ast.And) else "any", tuple(self._test(v) for v in n.values))
        if isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in _COMPARE:
            if not (isinstance(n.left, ast.Name) and not n.left.id.isupper()):
                raise self.fail(f"a condition starts with a measured quantity (lower case), got {ast.unparse(n.left)!r}")
            return Cond(n.left.id, _COMPARE[type(n.ops[0])], self._rhs(n.comparators[0]))
        raise self.fail(f"expected 'quantity <op> value' (op one of <= >= < >) or and/or of those, got {ast.unparse(n)!r}")

    def _rhs(self, n: ast.expr) -> Union[float, Ref]:
        quantities = [m.id for m in ast.walk(n) if isinstance(m, ast.Name) and not m.id.isupper()]
        if not quantities:
            return self._number(n)
        if len(quantities) != 1:
            raise self.fail(f"a quantity on the right-hand side must read 'scale * quantity + offset', got "
                            f"{ast.unparse(n)!r}")
        offset = 0.0
        if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Add, ast.Sub)):
            offset = self._number(n.right) * (1.0 if isinstance(n.op, ast.Add) else -1.0)
            n = n.left
        scale = 1.0
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mult):
            scale, n = self._number(n.left), n.right
        if not (isinstance(n, ast.Name) and not n.id.isupper()):
            raise self.fail(f"a quantity on the right-hand side must read 'scale * quantity + offset', got "
                            f"{ast.unparse(n)!r}")
        return Ref(n.id, scale, offset)

    def _number(self, n: ast.expr) -> float:
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            return float(n.value)
        if isinstance(n, ast.Name) and n.id in self.constants:
            v = self.constants[n.id]
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
            raise self.fail(f"threshold {n.id} is {v!r}, not a number (index it: {n.id}[0])")
        if isinstance(n, ast.Name):
            raise self.fail(f"unknown threshold {n.id!r}; thresholds are the upper-case names of "
                            "scoredyn.studies.thresholds")
        if (isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id in self.constants
                and isinstance(n.slice, ast.Constant) and isinstance(n.slice.value, int)):
            v = self.constants[n.value.id]
            if not isinstance(v, tuple) or not -len(v) <= n.slice.value < len(v):
                raise self.fail(f"{ast.unparse(n)}: threshold {n.value.id} is {v!r}; index a tuple within its length")
            return float(v[n.slice.value])
        if isinstance(n, ast.BinOp) and type(n.op) in _ARITH:
            return float(_ARITH[type(n.op)](self._number(n.left), self._number(n.right)))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -self._number(n.operand)
        raise self.fail(f"expected a number, a threshold name or arithmetic of those, got {ast.unparse(n)!r}")


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    with open(path, "rb") as f:
        return tomllib.load(f)


def claim_table(study: str) -> Path:
    """The path of a study's claim table, ``studies/<study>.claims.toml``."""
    return Path(__file__).with_name(f"{study}.claims.toml")


def load_registry(study: str, path: Optional[Path] = None) -> Registry:
    """The claims of ``study``, read from its table (see the module docstring), in table order."""
    path = claim_table(study) if path is None else Path(path)
    table = _read_toml(path)
    constants = _thresholds()
    def fill(text: Any, where: str, names: Mapping[str, Any]) -> str:
        try:
            return str(text).format_map(names)
        except (KeyError, IndexError, ValueError, AttributeError) as e:
            raise ValueError(f"{where}: cannot fill in {{...}} in {str(text)[:60]!r} ({type(e).__name__}: {e}); name a "
                             "threshold or a [text] entry, and write a literal brace as {{ or }}") from None

    texts = {k: fill(v, f"{path.name}: [text] {k}", constants) for k, v in table.get("text", {}).items()}
    fmt = {**constants, **texts}
    reg = Registry(study)
    for i, row in enumerate(table.get("claim", [])):
        where = f"{path.name}: claim {row.get('id', f'#{i + 1}')!s}"
        unknown = sorted(set(row) - _CLAIM_KEYS)
        missing = sorted({"id", "statement", "source", "kind", "quantities", "supported"} - set(row))
        if unknown or missing:
            raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing}; keys are {sorted(_CLAIM_KEYS)}")
        parse = _Parser(where, constants)
        text = {k: fill(row.get(k, ""), where, fmt) for k in ("statement", "definitions", "why", "notes")}
        criterion = Criterion(
            parse.test(row["supported"]),
            not_supported=parse.test(row["not_supported"]) if "not_supported" in row else None,
            inconclusive_if=parse.test(row["inconclusive_if"]) if "inconclusive_if" in row else None,
            why=text["why"], definitions=text["definitions"])
        reg.add(ClaimSpec(str(row["id"]), text["statement"], Source(*row["source"]), str(row["kind"]),
                          tuple(row["quantities"]), criterion, on_networks=bool(row.get("on_networks", False)),
                          notes=text["notes"]))
    return reg
