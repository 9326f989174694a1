"""Claims as data: what a paper says, where, what is measured, and the criterion that decides.

How to declare a claim (at module level in a study, so docs/studies.md can be generated from it
without running anything)::

    from .claims import ClaimSpec, Criterion, Source, at_least, at_most, ref
    from . import thresholds as T

    COLLAPSE = ClaimSpec(
        id="kim.2e",
        statement="Samples of the optimum collapse onto training points",
        source=Source("Kim 2026", "§4.2", "Thm 4.4"),
        kind="paper",                      # "paper" | "extension" | "open question"
        quantities=("copy_fraction", "nfe"),
        criterion=Criterion(supported=at_least("copy_fraction", T.COPY)),
        on_networks=False,                 # True: the claim rests on trained networks (quality gate)
    )

and judge it after measuring::

    claim = COLLAPSE.judge({"copy_fraction": 0.97, "nfe": 212}, networks=[gate_a, gate_b])

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

import math
from dataclasses import dataclass, field
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
