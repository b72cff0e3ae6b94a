"""Issue 24: each "when it applies" condition is named once (vlbench.recipe.applies.When: the test and its words).

A field's `applies` is a named condition; its help's "has an effect only …" clause is that condition's text, so
the sentence the user reads and the check that refuses a setting cannot say different things.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vlbench.errors import UserError
from vlbench.recipe import Recipe, field_default, field_infos
from vlbench.recipe import applies as A

PACKAGE = Path(A.__file__).parent
NAMED = {name: value for name, value in vars(A).items() if isinstance(value, A.When)}


def test_every_conditional_field_applies_through_a_named_condition_and_says_its_words():
    conditional = {name: info for name, info in field_infos().items() if info.applies is not None}
    assert len(conditional) > 30
    for name, info in conditional.items():
        assert isinstance(info.applies, A.When), name
        assert info.when == info.applies.text and info.when, name


def _string_constants(path: Path) -> list[str]:
    """The package's source strings as Python joins them (implicitly concatenated literals are one constant)."""
    return [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)]


def test_each_conditions_words_are_written_once_in_the_package():
    """The VL-used clause was written out in nine help sentences; now each clause is one literal in applies.py.
    (Clauses of a few words, "with dual", are ordinary prose elsewhere: the check takes the longer ones.)"""
    base = {name: w for name, w in NAMED.items()
            if w.text in _string_constants(PACKAGE / "applies.py") and len(w.text) > 30}
    assert {"VL_USED", "OWN_USED", "QWEN3_USED", "ALPHA_MIX", "HOLDS_IMAGE_ROWS", "LAYER_USED"} <= set(base)
    strings = [s for path in sorted(PACKAGE.glob("*.py")) for s in _string_constants(path)]
    for name, when in base.items():
        containing = [s for s in strings if when.text in s]
        assert containing == [when.text], (name, containing)


def test_a_conjunction_tests_both_parts_and_says_both():
    both = A.VL_USED & A.NO_SCHEDULE
    assert both.text == f"{A.VL_USED.text} and {A.NO_SCHEDULE.text}"
    assert both(Recipe())
    assert not both(Recipe(schedule="0:vl, 4:qwen3"))  # a schedule
    assert not both(Recipe(alpha=0.0))  # no VL
    noted = A.ONE_PASS.note("(dual: style_layer)")
    assert noted.text == f"{A.ONE_PASS.text} (dual: style_layer)"
    assert noted(Recipe()) and not noted(Recipe(dual=True))


@pytest.mark.parametrize("fields, named, condition", [
    ({"alpha": 0.0, "dual": True}, "dual", "VL_USED"),
    ({"style_layer": -3}, "style_layer", "DUAL"),
    ({"negative_prompt": "blurry"}, "negative_prompt", "NEGATIVE_FROM_QWEN3"),
    ({"vl_blocks": "0-3", "schedule": "0:vl, 4:qwen3"}, "vl_blocks", "NO_SCHEDULE"),
])
def test_the_refusal_says_the_words_of_the_condition_that_refused_it(fields, named, condition):
    with pytest.raises(UserError) as err:
        Recipe(**fields)
    assert err.value.field == named
    assert f"has no effect in this recipe: it applies only {field_infos()[named].when}" == err.value.problem
    assert NAMED[condition].text in err.value.problem


def test_a_field_set_to_its_default_is_never_refused_whatever_its_condition():
    for name in field_infos():
        Recipe(**{name: field_default(name)})  # no error
