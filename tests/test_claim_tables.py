"""The claim tables (studies/<study>.claims.toml) and their condition language."""

from __future__ import annotations

from pathlib import Path

import pytest

from scoredyn.studies import thresholds as T
from scoredyn.studies.claims import (
    Cond, Criterion, Group, Ref, Source, above, all_of, any_of, at_least, at_most, below, claim_table, load_registry, ref,
)

HEAD = '[[claim]]\nid = "x.1"\nstatement = "s"\nsource = ["P", "§1", "eq. 2"]\nkind = "paper"\n'


def _table(tmp_path: Path, body: str, head: str = HEAD) -> Path:
    p = tmp_path / "x.claims.toml"
    p.write_text(head + body, encoding="utf-8")
    return p


def test_conditions_read_as_the_combinators_build_them(tmp_path: Path) -> None:
    p = _table(tmp_path, 'quantities = ["a", "b", "c", "copy_T1"]\n'
                         'supported = "a <= 2 * b + COPY_RISE and (c > b - COPY_RISE or copy_T1 >= EIG_RATIO[1])"\n'
                         'not_supported = "a > (1 / SAMPLER_SAME) * b"\n'
                         'inconclusive_if = "c < 0.5 and c >= -1"\nwhy = "w"\n'
                         'definitions = "k = {K_SIGMA:g} and {NOTE}"\n'
                         '[text]\nNOTE = "copies below {COPY:g}"\n')
    spec = load_registry("x", p)["x.1"]
    want = Criterion(all_of(at_most("a", ref("b", scale=2.0, offset=T.COPY_RISE)),
                            any_of(above("c", ref("b", offset=-T.COPY_RISE)), at_least("copy_T1", T.EIG_RATIO[1]))),
                     not_supported=above("a", ref("b", scale=1.0 / T.SAMPLER_SAME)),
                     inconclusive_if=all_of(below("c", 0.5), at_least("c", -1.0)), why="w",
                     definitions="k = 3 and copies below 0.9")
    assert spec.criterion == want
    assert spec.source == Source("P", "§1", "eq. 2") and spec.kind == "paper" and spec.on_networks is False
    assert isinstance(spec.criterion.supported, Group) and isinstance(spec.criterion.not_supported, Cond)
    assert spec.criterion.not_supported.rhs == Ref("b", 0.8, 0.0)


@pytest.mark.parametrize("body, says", [
    ('quantities = ["a"]\nsupported = "a <= NOT_A_THRESHOLD"\n', "unknown threshold 'NOT_A_THRESHOLD'"),
    ('quantities = ["a"]\nsupported = "a <= "\n', "cannot read the condition"),
    ('quantities = ["a"]\nsupported = "a + 1"\n', "expected 'quantity <op> value'"),
    ('quantities = ["a"]\nsupported = "a == 1"\n', "expected 'quantity <op> value'"),
    ('quantities = ["a"]\nsupported = "COPY >= a"\n', "starts with a measured quantity"),
    ('quantities = ["a", "b", "c"]\nsupported = "a <= b * c"\n', "scale * quantity + offset"),
    ('quantities = ["a"]\nsupported = "a <= EIG_RATIO"\n', "not a number (index it"),
    ('quantities = ["a"]\nsupported = "a <= __import__"\n', "the criterion uses ['__import__']"),
    ('quantities = ["a"]\nsupported = "a <= 1"\ncolour = "red"\n', "unknown keys ['colour']"),
    ('quantities = ["a"]\n', "missing keys ['supported']"),
    ('quantities = ["a"]\nsupported = "b <= 1"\n', "the criterion uses ['b']"),
    ('quantities = ["a"]\nsupported = "a >= EIG_RATIO[5]"\n', "index a tuple within its length"),
    ('quantities = ["a"]\nsupported = "a >= COPY[0]"\n', "index a tuple within its length"),
    ('quantities = ["a"]\nsupported = "a >= 1"\nnotes = "a set {x}"\n', "write a literal brace as {{"),
])
def test_a_bad_table_is_refused_with_the_claim_and_the_reason(tmp_path: Path, body: str, says: str) -> None:
    with pytest.raises(ValueError) as e:
        load_registry("x", _table(tmp_path, body))
    assert says in str(e.value) and "x.1" in str(e.value), str(e.value)


def test_every_study_table_loads_and_names_only_known_thresholds() -> None:
    n = 0
    for study in ("kim", "smoothing", "teleport"):
        reg = load_registry(study)
        assert claim_table(study).is_file() and reg.claims, study
        n += len(reg.claims)
    assert n >= 30, f"only {n} claims declared"
    assert hasattr(T, "UV_NO_MODEL")
