"""The README's promise: the tiny models build and an image comes out end to end."""

from vlbench.engine.engine import Reference
from vlbench.recipe import Recipe


def test_tiny_end_to_end(engine, ref_image):
    result = engine.run(Recipe(width=64, height=64, steps=2), "a red square", [Reference.open(ref_image)])
    assert result.image.size == (64, 64)
    roles = set(result.conditioning.extraction.roles)
    assert {"template", "prompt", "vision_start", "image", "vision_end"} <= roles
