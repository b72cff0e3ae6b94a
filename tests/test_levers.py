"""issue 27: levers for VL conditioning, each specified against transformers / diffusers called directly on the tiny
models: its neutral setting equals today's output, and it changes exactly what it claims (docs/levers.md)."""

from __future__ import annotations

import pytest
import torch

from vlbench.engine.engine import Reference
from vlbench.errors import UserError
from vlbench.recipe import Recipe, VLSystem

PROMPT = "A photo of a red fox sitting in fresh snow"


@pytest.fixture(scope="module")
def hf_vl(tiny_dirs):
    """Qwen3-VL loaded by transformers alone: the reference for the VL input and its hidden states."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_dirs.vl)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dirs.vl, dtype=torch.float32).eval()
    return processor, model


def _hf_inputs(processor, images, text, system=None):
    """The VL input as transformers' own chat template renders it, with an optional system message."""
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=rendered, images=images or None, return_tensors="pt")


def _contains(seq: list[int], part: list[int]) -> bool:
    return any(seq[i:i + len(part)] == part for i in range(len(seq) - len(part) + 1))


# ---------------------------------------------------------------- lever 4: a VL system prompt
def test_no_vl_system_is_the_stock_template_token_for_token_and_state_for_state(engine, hf_vl, refs):
    processor, model = hf_vl
    cond = engine.condition(Recipe(), PROMPT, refs)
    inputs = _hf_inputs(processor, [refs[0].image], PROMPT)
    assert cond.extraction.input_ids == inputs["input_ids"][0].tolist()
    assert "system" not in cond.extraction.decoded
    assert "vl_system" not in cond.describe()["vl"]
    with torch.no_grad():
        hidden = model.model(**inputs, output_hidden_states=True).hidden_states[-2][0]
    torch.testing.assert_close(cond.embeds, hidden, atol=1e-5, rtol=0)


@pytest.mark.parametrize("setting", ["style", "content", "Read the picture as a painter would."])
def test_vl_system_tokens_appear_in_the_recorded_vl_input_ids(engine, hf_vl, refs, setting):
    processor, model = hf_vl
    recipe = Recipe(vl_system=setting)
    text = recipe.resolve_vl_system()
    assert text == (VLSystem(setting).help if setting in VLSystem.values() else setting)
    cond = engine.condition(recipe, PROMPT, refs)
    record = cond.describe()["vl"]
    inputs = _hf_inputs(processor, [refs[0].image], PROMPT, system=text)
    assert record["input_ids"] == inputs["input_ids"][0].tolist()  # what transformers renders with the system turn
    system_ids = processor.tokenizer(f"<|im_start|>system\n{text}<|im_end|>")["input_ids"]
    assert _contains(record["input_ids"], system_ids)
    assert record["input_ids"][:len(system_ids)] == system_ids  # the system turn comes first
    assert record["vl_system"] == text
    assert record["decoded"].startswith(f"<|im_start|>system\n{text}<|im_end|>")
    # the prompt is still found, and the system turn's rows are template rows
    ex = cond.extraction
    assert processor.tokenizer.decode([ex.input_ids[i] for i in ex.positions("prompt")]) == PROMPT
    assert all(ex.roles[i] == "template" for i in range(len(system_ids)))
    with torch.no_grad():
        hidden = model.model(**inputs, output_hidden_states=True).hidden_states[-2][0]
    torch.testing.assert_close(cond.embeds, hidden, atol=1e-5, rtol=0)


def test_vl_system_changes_the_image_rows_through_attention(engine, refs):
    plain = engine.condition(Recipe(tokens="image"), PROMPT, refs)
    styled = engine.condition(Recipe(tokens="image", vl_system="style"), PROMPT, refs)
    assert plain.embeds.shape == styled.embeds.shape  # the same image rows …
    assert not torch.allclose(plain.embeds, styled.embeds, atol=1e-4)  # … read after a system turn


def test_vl_system_is_refused_where_it_has_no_effect_or_is_empty():
    with pytest.raises(UserError) as exc:
        Recipe(alpha=0.0, vl_system="style")
    assert exc.value.field == "vl_system"
    with pytest.raises(UserError) as exc:
        Recipe(vl_system="  ")
    assert exc.value.field == "vl_system"
    with pytest.raises(UserError) as exc:
        Recipe(alpha=0.5, alpha_policy="positionwise", tokens="text", vl_system="style")
    assert exc.value.field == "vl_system"


def test_a_system_turn_over_the_caption_budget_names_vl_system(engine, refs):
    # the tiny DiT's budget is 224 tokens; its tiny BPE spends more than that on the edit instruction
    with pytest.raises(UserError) as exc:
        engine.condition(Recipe(vl_system=VLSystem.EDIT.help * 2), PROMPT, refs)
    assert exc.value.field == "vl_system"


def test_a_special_token_in_the_system_text_is_a_user_error(engine, refs):
    with pytest.raises(UserError) as exc:
        engine.condition(Recipe(vl_system="hi <|im_start|>user"), PROMPT, refs)
    assert exc.value.field == "vl_system"


def test_dual_passes_both_read_the_system_turn(engine, refs):
    cond = engine.condition(Recipe(dual=True, vl_system="content"), PROMPT, refs)
    assert len(cond.extractions) == 2
    assert all(ex.vl_system == VLSystem.CONTENT.help for ex in cond.extractions)
