"""One Qwen3-VL forward over (reference images, optional text) -> an Extraction.

An Extraction keeps every hidden layer and a role for every position, so any token selection
at any layer is a slice of it: a layer or selection sweep costs one forward per (images, text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlbench.engine.recipe import TOKEN_SELECTIONS
from vlbench.errors import UserError

# Roles of positions in the VL input.
TEMPLATE, PROMPT, VISION_START, IMAGE, VISION_END = "template", "prompt", "vision_start", "image", "vision_end"
SELECTION_ROLES: dict[str, frozenset[str]] = {
    "full": frozenset({TEMPLATE, PROMPT, VISION_START, IMAGE, VISION_END}),
    "image": frozenset({IMAGE}),
    "image-markers": frozenset({VISION_START, IMAGE, VISION_END}),
    "text": frozenset({TEMPLATE, PROMPT}),
    "prompt": frozenset({PROMPT}),
}
assert set(SELECTION_ROLES) == set(TOKEN_SELECTIONS)
_SENTINEL = "\u2063VLBENCH-TEXT\u2063"


@dataclass
class Extraction:
    """Every hidden state of one VL forward, with the input that produced it."""

    hidden_states: torch.Tensor  # [num_hidden_layers + 1, L, D]; [0] = embeddings, [-1] = after final norm
    input_ids: list[int]
    roles: list[str]  # one of TEMPLATE, PROMPT, VISION_START, IMAGE, VISION_END per position
    decoded: str  # the VL input as text, special tokens included
    vl_text: str | None
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) fed to the vision tower
    source_sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of the references
    image_token_counts: list[int] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return self.hidden_states.shape[0]

    def check_layer(self, layer: int, name: str = "layer") -> int:
        n = self.num_layers
        if not -n <= layer < n:
            raise UserError(f"{name}: {layer} is out of range for this VL model; use -{n} … {n - 1} "
                            f"(hidden_states has {n} entries, -1 is after the final norm)")
        return layer

    def positions(self, tokens: str) -> list[int]:
        if tokens not in SELECTION_ROLES:
            raise UserError(f"tokens: unknown selection {tokens!r}; choose one of {', '.join(SELECTION_ROLES)}")
        wanted = SELECTION_ROLES[tokens]
        found = [i for i, role in enumerate(self.roles) if role in wanted]
        if not found:
            why = "no reference image was given" if tokens.startswith("image") else (
                "the VL text is empty (--vl-text none)" if tokens == "prompt" else "the input is empty")
            raise UserError(f"tokens {tokens}: selects no positions because {why}")
        return found

    def select(self, tokens: str, layer: int) -> torch.Tensor:
        """hidden_states[layer][positions(tokens)] -> [n, D]."""
        self.check_layer(layer)
        idx = torch.tensor(self.positions(tokens), device=self.hidden_states.device)
        return self.hidden_states[layer].index_select(0, idx)

    def roles_of(self, tokens: str) -> list[str]:
        return [self.roles[i] for i in self.positions(tokens)]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for role in self.roles:
            out[role] = out.get(role, 0) + 1
        return out


def load_image(path: str | Path):
    """Open a reference image as RGB, or a one-line error naming it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise UserError(f"--image {path}: no such file")
    if path.is_dir():
        raise UserError(f"--image {path}: is a directory; give an image file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise UserError(f"--image {path}: not an image PIL can read (PNG, JPEG, WebP …)") from None
    except Image.DecompressionBombError as exc:  # not an OSError: it would escape as a traceback
        raise UserError(f"--image {path}: too many pixels to open safely ({exc.args[0].split(',')[0]})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"--image {path}: the image is damaged or truncated ({exc})") from None


def check_text(text: str, what: str) -> None:
    """Refuse text the tokenizers cannot take: undecodable argv bytes arrive as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"{what}: is not valid UTF-8 (an undecodable byte at character {exc.start}); "
                        "check the terminal's or the file's encoding") from None


def _messages(num_images: int, text: str | None) -> list[dict]:
    content: list[dict] = [{"type": "image"} for _ in range(num_images)]
    if text is not None:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def image_token_count(image_processor, width: int, height: int, size: dict | None = None) -> int:
    """Image tokens the processor will produce for an image of this size (after its smart resize)."""
    kwargs = {}
    if size is not None:
        kwargs = {"max_pixels": size["longest_edge"], "min_pixels": size["shortest_edge"]}
    return image_processor.get_number_of_image_patches(height, width, kwargs) // image_processor.merge_size**2


def fit_size(image_processor, sizes: list[tuple[int, int]], available: int) -> dict | None:
    """The processor `size` that makes all images fit in `available` tokens, or None if they already do.

    The processor itself resizes (its smart resize keeps the aspect ratio); we only choose the pixel
    cap. Images already under the cap come out exactly as without one.
    """
    native = [image_token_count(image_processor, w, h) for (w, h) in sizes]
    if sum(native) <= available:
        return None
    factor = (image_processor.patch_size * image_processor.merge_size) ** 2  # pixels per token
    default_min = image_processor.size["shortest_edge"]

    def size_for(cap_tokens: int) -> dict:
        cap = cap_tokens * factor
        return {"longest_edge": cap, "shortest_edge": min(default_min, cap)}

    def total(cap_tokens: int) -> int:
        return sum(image_token_count(image_processor, w, h, size_for(cap_tokens)) for (w, h) in sizes)

    lo, hi = 1, max(native)
    if total(lo) > available:
        raise ValueError("the references cannot fit")
    while lo < hi:  # largest cap whose total fits
        mid = (lo + hi + 1) // 2
        if total(mid) <= available:
            lo = mid
        else:
            hi = mid - 1
    return size_for(lo)


@torch.inference_mode()
def extract(vl, images: list, text: str | None, budget: int, max_image_tokens: int | None = None) -> Extraction:
    """Run Qwen3-VL once over `images` (PIL, RGB) then `text`, through the model's own chat template.

    `budget` is the longest sequence the DiT will accept; references are downscaled (by the
    processor, aspect ratio kept) only when image + text tokens would not fit in it.
    """
    processor, tokenizer = vl.processor, vl.processor.tokenizer
    if not images and text is None:
        raise UserError("nothing to extract: no reference image and no VL text (--vl-text none); give --image or a text")
    if text is not None:
        check_text(text, "--prompt/--vl-text")
    if text is not None and _SENTINEL in text:
        raise UserError("--vl-text: contains a reserved marker character")
    if text is not None:  # the tokenizer parses special tokens in text: these would forge a vision block
        vision_ids = [processor.vision_start_token_id, processor.vision_end_token_id, processor.image_token_id,
                      getattr(processor, "video_token_id", None)]
        for token in tokenizer.convert_ids_to_tokens([i for i in vision_ids if i is not None]):
            if token in text:
                raise UserError(f"--prompt/--vl-text: contains {token}, a Qwen3-VL vision token; remove it")
    rendered = processor.apply_chat_template(_messages(len(images), text), add_generation_prompt=True, tokenize=False)

    # Fit the references into the caption budget: text tokens are fixed, images take what is left.
    text_tokens = len(tokenizer(rendered, add_special_tokens=False)["input_ids"]) - len(images)
    if text_tokens > budget:
        raise UserError(f"--prompt/--vl-text: the VL input is {text_tokens} tokens, over the caption budget of "
                        f"{budget}; shorten the text")
    size = None
    if images:
        available = budget - text_tokens
        if max_image_tokens is not None:
            available = min(available, max_image_tokens)
        sizes = [img.size for img in images]
        for w, h in sizes:  # the processor refuses extreme aspect ratios (a ValueError deep inside it)
            try:
                image_token_count(processor.image_processor, w, h)
            except ValueError as exc:
                raise UserError(f"--image: a {w}×{h} reference cannot be read by Qwen3-VL's processor ({exc}); "
                                "crop or pad it") from None
        try:
            size = fit_size(processor.image_processor, sizes, available)
        except ValueError:
            raise UserError(f"--image: {len(images)} reference(s) cannot fit in {available} image tokens "
                            f"(caption budget {budget}, text {text_tokens}); shorten the text or use fewer images") from None

    kwargs = {"images": images} if images else {}
    if size is not None:
        kwargs["size"] = size
    inputs = processor(text=[rendered], return_tensors="pt", return_offsets_mapping=True, **kwargs)
    offsets = inputs.pop("offset_mapping")[0].tolist()
    input_ids = inputs["input_ids"][0].tolist()
    roles = _roles(processor, input_ids, offsets, rendered, text, len(images))

    inputs = {k: v.to(vl.device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(vl.dtype)
    out = vl.model.model(**inputs, output_hidden_states=True, use_cache=False, return_dict=True)
    hidden = torch.stack([h[0] for h in out.hidden_states])  # [layers + 1, L, D]

    patch = processor.image_processor.patch_size
    grid = inputs["image_grid_thw"].tolist() if "image_grid_thw" in inputs else []
    return Extraction(
        hidden_states=hidden,
        input_ids=input_ids,
        roles=roles,
        decoded=tokenizer.decode(input_ids, skip_special_tokens=False),
        vl_text=text,
        image_sizes=[(w * patch, h * patch) for (_, h, w) in grid],
        source_sizes=[img.size for img in images],
        image_token_counts=[t * h * w // processor.image_processor.merge_size**2 for (t, h, w) in grid],
    )


def _roles(processor, input_ids, offsets, rendered, text, num_images) -> list[str]:
    start_id, end_id, pad_id = processor.vision_start_token_id, processor.vision_end_token_id, processor.image_token_id
    roles: list[str] = []
    inside = False
    for tok in input_ids:
        if tok == start_id:
            roles.append(VISION_START)
            inside = True
        elif tok == end_id:
            roles.append(VISION_END)
            inside = False
        elif tok == pad_id or inside:
            roles.append(IMAGE)
        else:
            roles.append(TEMPLATE)
    if roles.count(VISION_START) != num_images:
        raise RuntimeError(f"expected {num_images} vision blocks, found {roles.count(VISION_START)}")
    if text:
        # The processor expands image placeholders before the text, so locate the text from the end.
        templ = processor.apply_chat_template(_messages(num_images, _SENTINEL), add_generation_prompt=True, tokenize=False)
        prefix, suffix = templ.split(_SENTINEL)
        if prefix + text + suffix != rendered:
            raise RuntimeError("the chat template does not insert the VL text verbatim")
        total = max(end for _, end in offsets)
        lo, hi = total - len(suffix) - len(text), total - len(suffix)
        for i, (a, b) in enumerate(offsets):
            if roles[i] == TEMPLATE and a < hi and b > lo:
                roles[i] = PROMPT
    return roles
