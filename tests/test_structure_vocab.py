"""Issue 24: outside vlbench/recipe/, a recipe vocabulary's value is its enum member, never a string literal.

Checked on the syntax tree of src/vlbench (as tests/test_structure.py checks imports, writes and reads): a
comparison (==, !=, in, not in) against a literal that is a value of a recipe vocabulary (Tokens, MixPolicy,
Normalization, … — every StrEnum of vlbench.recipe.vocab but Section), and a tuple, list, set or dict's keys that
list such values, are flagged: the module should write `MixPolicy.ATTEND`, `Normalization.values()`. A renamed or
added value then reaches every place, or fails at import.

Some values are also ordinary words of other vocabularies in the code (AMBIGUOUS, each with what else it names):
a comparison with one of them is flagged only when its other side names a recipe field of that vocabulary
(`recipe.tokens`, `tokens`, `data["tokens"]`, `row.get("source")`), and a collection only when it lists a
vocabulary whole or holds one of its unambiguous values. The planted tests show the checker failing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vlbench.recipe import field_infos, vocab
from vlbench.recipe.vocab import Choice, Section, Source, VLSystem, VLText

SRC = Path(__file__).resolve().parents[1] / "src"

VOCABULARIES: tuple[type[Choice], ...] = tuple(
    c for c in vars(vocab).values() if isinstance(c, type) and issubclass(c, Choice) and c not in (Choice, Section))

# value -> what else it names in the code; such a literal is flagged only next to a field of its vocabulary
AMBIGUOUS = {
    "image": "an extraction role (engine.extract.IMAGE), the statistics' unit, the --image input",
    "text": "an extraction role group (diagnose.ROLE_GROUPS)",
    "prompt": "the prompt input and an extraction role (engine.extract.PROMPT)",
    "vl": "a model (ModelSpec.vl), a device-placement part and the record's conditioning key",
    "qwen3": "the text encoder's name in records, calibration files and placement",
    "recipe": "the run record's recipe (store column, results key, config table)",
    "grid": "the conditioning record's per-image grid and the stats plan's grid",
    "style": "a metric's kind and dual's style pass",
    "content": "dual's content pass",
}

# names that hold a vocabulary's value besides the fields that take it
SUBJECTS: dict[str, set[type[Choice]]] = {"source": {Source}}
for _name, _info in field_infos().items():
    _vocab = _info.choices or {"vl_text": VLText, "schedule": Source}.get(_info.kind)
    if _name == "vl_system":
        _vocab = VLSystem
    if _vocab is not None:
        SUBJECTS.setdefault(_name, set()).add(_vocab)


def _vocabularies_of(value: str) -> set[type[Choice]]:
    return {v for v in VOCABULARIES if value in v.values()}


def _member(value: str, near: set[type[Choice]]) -> str:
    """The member to write: of the vocabulary the other side names, else of every vocabulary holding the value."""
    vocabs = (_vocabularies_of(value) & near) or _vocabularies_of(value)
    return " or ".join(sorted(f"{v.__name__}.{v(value).name}" for v in vocabs))


def _subject(node: ast.expr) -> str | None:
    """The name an operand reads: `x.tokens`, `tokens`, `d["tokens"]`, `d.get("tokens")` -> "tokens"."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.slice.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args \
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def _strings(node: ast.expr) -> list[ast.Constant]:
    elements = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [e for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)]


def check_literals(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, what) for each comparison with, or list of, a recipe vocabulary's values written as literals."""
    found: list[tuple[int, str]] = []
    compared: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare) or not all(
                isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        subjects = {_subject(o) for o in operands} - {None}
        near = set().union(*(SUBJECTS.get(s, set()) for s in subjects))
        for operand in operands:
            for const in _strings(operand):
                compared.add(id(operand))
                vocabs = _vocabularies_of(const.value)
                if vocabs and (const.value not in AMBIGUOUS or vocabs & near):
                    found.append((node.lineno, f"compares {const.value!r}: write {_member(const.value, near)}"))
    for node in ast.walk(tree):
        if id(node) in compared:
            continue
        if isinstance(node, ast.Dict):
            elements = node.keys
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            elements = node.elts
        else:
            continue
        if len(elements) < 2 or not all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elements):
            continue
        values = {e.value for e in elements}
        for vocab_ in VOCABULARIES:
            if values <= set(vocab_.values()) and (values - set(AMBIGUOUS) or values == set(vocab_.values())):
                found.append((node.lineno, f"lists {vocab_.__name__} values {sorted(values)}: use {vocab_.__name__}"))
                break
    return sorted(set(found))


def literal_problems(root: Path = SRC) -> list[str]:
    problems = []
    for path in sorted((root / "vlbench").rglob("*.py")):
        if (root / "vlbench" / "recipe") in path.parents:
            continue  # the vocabularies are defined there
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        for line, what in check_literals(ast.parse(path.read_text(encoding="utf-8"))):
            problems.append(f"{module}:{line} {what}")
    return problems


def test_no_module_outside_the_recipe_compares_or_lists_a_vocabulary_value_as_a_literal():
    assert literal_problems() == []


@pytest.mark.parametrize("source, expected", [
    ('def f(r):\n    return r.alpha_policy == "attend"\n', "2 compares 'attend': write MixPolicy.ATTEND"),
    ('def f(r):\n    return r.tokens in ("image", "image-markers")\n', "compares 'image': write Tokens.IMAGE"),
    ('def f(row):\n    return row.get("source") != "vl"\n', "compares 'vl': write Source.VL"),
    ('MODES = ("none", "per-dim", "per-dim-scale")\n', "1 lists Normalization values"),
    ('SCOPES = {"refiner+joint": 1, "joint": 2}\n', "lists AttendScope values"),
    ('BY_SOURCE = {"recipe": 1, "vl": 2, "qwen3": 3}\n', "lists Source values"),
])
def test_the_literal_checker_catches_a_planted_literal(tmp_path, source, expected):
    (tmp_path / "vlbench").mkdir()
    (tmp_path / "vlbench" / "planted.py").write_text(source)
    problems = literal_problems(tmp_path)
    assert any(expected in p for p in problems), problems


def test_the_same_words_in_their_other_meanings_pass(tmp_path):
    (tmp_path / "vlbench").mkdir()
    (tmp_path / "vlbench" / "planted.py").write_text(
        "from vlbench.recipe import MixPolicy, Tokens\n"
        "def f(role, part, unit, r):\n"
        "    a = role in ('image', 'text') and part == 'vl' and unit == 'image'\n"
        "    return a and r.tokens == Tokens.IMAGE and r.alpha_policy in (MixPolicy.ATTEND, MixPolicy.SPLIT)\n"
        "ROLES = {'image': 1, 'markers': 2}\n")
    assert literal_problems(tmp_path) == []
