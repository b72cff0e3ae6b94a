"""Recipe: defaults, validation (every error names its field), TOML files and flag overrides."""

from __future__ import annotations

import pytest

from vlbench.recipe import Recipe, Tokens, load_recipe, save_recipe
from vlbench.errors import UserError


def test_defaults_are_turbos_and_pure_vl():
    r = Recipe()
    assert (r.alpha, r.tokens, r.layer, r.vl_text, r.max_image_tokens) == (1.0, "full", -2, "prompt", None)
    assert (r.seed, r.steps, r.width, r.height, r.guidance, r.negative_prompt) == (0, 9, 1024, 1024, 0.0, "")
    assert r.uses_vl and not r.uses_text_encoder


def test_token_selections_are_the_six_named_ones():
    assert list(Tokens.values()) == ["full", "image", "image+template", "image-markers", "text", "prompt"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("alpha", 1.5), ("alpha", -0.1), ("alpha", float("nan")), ("alpha", "0.5"), ("alpha", True),
        ("tokens", "bogus"), ("tokens", "image_tokens_no_markers"),
        ("width", 100), ("height", 8), ("width", 1024.0), ("height", 10_000),
        ("steps", 0), ("steps", -3), ("steps", 2.5), ("steps", True),
        ("guidance", -1), ("guidance", float("inf")), ("guidance", "high"),
        ("layer", 1.5), ("layer", "-2"),
        ("seed", -1), ("seed", 2**64), ("seed", 1.0),
        ("max_image_tokens", 0), ("vl_text", None), ("negative_prompt", 3),
    ],
)
def test_every_invalid_value_is_a_user_error_naming_the_field(field, value):
    with pytest.raises(UserError) as err:
        Recipe(**{field: value})
    assert err.value.field == field, str(err.value)
    assert str(err.value).startswith(f"{field} ") or str(err.value).startswith(f"{field}:"), str(err.value)
    assert "\n" not in str(err.value)


def test_width_error_suggests_a_multiple_of_16():
    with pytest.raises(UserError, match="width 100: is not a multiple of 16.*try 96"):
        Recipe(width=100)


def test_replace_validates_too():
    with pytest.raises(UserError, match="steps"):
        Recipe().replace(steps=0)


def test_every_mix_has_its_own_policy_and_a_fractional_alpha_attends_by_default():
    r = Recipe(alpha=0.5, tokens="full")
    assert r.alpha_policy == "attend" and r.mixes == {"alpha": (0.5, "attend")}
    assert r.uses_vl and r.uses_text_encoder
    assert Recipe(intra_ratio=0.3, intra_policy="split").mixes == {"intra_ratio": (0.3, "split")}
    assert Recipe(dual=True, dual_ratio=0.2, alpha=0.6).mixes == {"dual_ratio": (0.2, "attend"), "alpha": (0.6, "attend")}
    with pytest.raises(UserError, match="alpha_policy"):
        Recipe(alpha=0.5, alpha_policy="interpolate")


def test_a_recipe_of_an_earlier_version_says_what_replaced_its_field(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text('alpha = 0.5\nlength_policy = "pool"\n')
    with pytest.raises(UserError, match="length_policy: replaced by one policy per mix"):
        load_recipe(path)


def test_recipes_are_hashable_and_compare_by_value():
    assert Recipe(seed=3) == Recipe(seed=3) and hash(Recipe(seed=3)) == hash(Recipe(seed=3))
    assert Recipe(seed=3) != Recipe(seed=4)
    assert Recipe(seed=3).key() == Recipe(seed=3).key() != Recipe(seed=4).key()


# ---------------------------------------------------------------- TOML files
def test_toml_round_trip_is_equal(tmp_path):
    recipes = [
        Recipe(),
        Recipe(alpha=0.5, tokens="text", layer=-5, vl_text="none", max_image_tokens=300, seed=2**63 - 1,
               steps=4, width=512, height=768, guidance=3.5,
               negative_prompt='ünïcödé "quoted" back\\slash\ttab\nnewline'),
        Recipe(vl_text="Describe this image.", tokens="image-markers", layer=7),
    ]
    for i, recipe in enumerate(recipes):
        path = tmp_path / f"r{i}.toml"
        save_recipe(recipe, path)
        back = load_recipe(path)
        assert back == recipe
        assert back.to_dict() == recipe.to_dict()


def test_toml_round_trip_of_a_string_with_a_control_character(tmp_path):
    """TOML forbids raw control characters (U+0000-U+001F and U+007F) in strings: they must be escaped."""
    for text in ("nul\x00", "esc\x1b[0m", "del\x7f"):
        recipe = Recipe(negative_prompt=text, guidance=1.0)
        save_recipe(recipe, tmp_path / "r.toml")
        assert load_recipe(tmp_path / "r.toml") == recipe, repr(text)


def test_a_recipe_file_may_set_only_some_keys(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('tokens = "image"\nlayer = -5\n')
    assert load_recipe(path) == Recipe(tokens="image", layer=-5)


def test_unknown_toml_key_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('alpha = 1.0\nlayre = -2\n')
    with pytest.raises(UserError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message and "'layre'" in message
    assert "layer" in message  # the known keys are listed


def test_bad_value_in_a_toml_file_names_the_field(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('width = 100\n')
    with pytest.raises(UserError, match="width"):
        load_recipe(path)


def test_a_bad_value_in_a_recipe_file_is_an_error_even_when_a_flag_sets_that_field(tmp_path):
    """`steps = "two"` is a broken file: a --steps flag on the same run must not hide it."""
    path = tmp_path / "r.toml"
    path.write_text('steps = "two"\nlayer = -3\n')
    with pytest.raises(UserError) as err:
        load_recipe(path, overrides={"steps": 4})
    assert str(path) in str(err.value) and "steps" in str(err.value) and "whole number" in str(err.value)
    path.write_text('image_weights = [1, "x"]\n')
    with pytest.raises(UserError, match=f"{path}.*image_weights.*numbers"):
        load_recipe(path, overrides={"image_weights": (1.0, 2.0)})
    # a combination the file gets wrong is the flag's to fix: a curve without alpha_end ...
    path.write_text('curve = "linear"\n')
    with pytest.raises(UserError, match=f"{path}.*alpha_end"):
        load_recipe(path)
    assert load_recipe(path, overrides={"curve": "constant"}) == Recipe()  # ... is fixed by the flag that sets it


def test_missing_and_malformed_recipe_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("alpha = = 1\n")
    with pytest.raises(UserError, match=f"{bad}.*not valid TOML"):
        load_recipe(bad)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match=str(binary)):
        load_recipe(binary)


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "r.toml"
    save_recipe(Recipe(tokens="text", seed=3, steps=4), path)
    r = load_recipe(path, overrides={"seed": 5, "width": 512})
    assert (r.tokens, r.seed, r.steps, r.width) == ("text", 5, 4, 512)
    assert load_recipe(path, overrides={}) == Recipe(tokens="text", seed=3, steps=4)
    with pytest.raises(UserError, match="steps"):  # overrides are validated like the file
        load_recipe(path, overrides={"steps": 0})


def test_an_integer_written_for_a_float_field_is_the_same_recipe(tmp_path):
    """`alpha = 1` in a TOML file is the default recipe: equal, and the same cache key."""
    path = tmp_path / "r.toml"
    path.write_text("alpha = 1\nguidance = 0\n")
    loaded = load_recipe(path)
    assert loaded == Recipe()
    assert loaded.key() == Recipe().key()
