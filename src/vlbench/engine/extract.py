"""One Qwen3-VL forward over (reference images, optional text) -> an Extraction.

An Extraction keeps every hidden layer and a role for every position, so any token selection
at any layer is a slice of it: a layer or selection sweep costs one forward per (images, text).

`prepare` does everything before the model (validation, chat template, budget fit, processor,
roles); `forward` runs one prepared input, `forward_batch` several in ONE right-padded model call
(a dual recipe's two passes), each result equal to its unbatched forward up to float summation order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlbench.engine.precheck import check_text_bound, max_token_chars
from vlbench.pixels import as_rgb
from vlbench.recipe import Tokens
from vlbench.errors import UserError

# Roles of positions in the VL input, and the roles each selection keeps (torch-free: caption_plan counts them too).
from vlbench.engine.caption_plan import (IMAGE, PROMPT, SELECTION_ROLES, TEMPLATE, VISION_END,  # noqa: E402
                                         VISION_START, VLCounts)

assert set(SELECTION_ROLES) == set(Tokens.values())
_SENTINEL = "\u2063VLBENCH-TEXT\u2063"


def token_grid(size: tuple[int, int], n: int) -> tuple[int, int]:
    """The (rows, columns) of an image's n tokens, for the (width, height) fed to the vision tower."""
    w, h = size
    rows = max(1, round((n * h / w) ** 0.5))
    while n % rows:  # the grid is exact: rows × columns == tokens
        rows -= 1
    return rows, n // rows


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
    # issue 17: only when asked (forward's attention_layer): the VL text's attention to each image position,
    # [number of IMAGE positions] float32 in position order, summing to 1 (prompt_image_attention's formula)
    image_attention: torch.Tensor | None = None
    attention_layer: int | None = None  # the decoder layer (0-based) image_attention was read from
    vl_system: str | None = None  # issue 27: the system turn's text (None: no system turn, the stock template)

    @property
    def image_grids(self) -> list[tuple[int, int]]:
        """Each image's token grid (rows, columns) after the processor's merge, in raster order of its image rows."""
        return [token_grid(size, n) for size, n in zip(self.image_sizes, self.image_token_counts)]

    @property
    def num_layers(self) -> int:
        return self.hidden_states.shape[0]

    def check_layer(self, layer: int, name: str = "layer") -> int:
        return check_layer_index(layer, self.num_layers, name)

    def positions(self, tokens: str) -> list[int]:
        if tokens not in SELECTION_ROLES:
            raise UserError("unknown selection", field="tokens", value=tokens,
                            fix=f"choose one of {', '.join(SELECTION_ROLES)}")
        wanted = SELECTION_ROLES[tokens]
        found = [i for i, role in enumerate(self.roles) if role in wanted]
        if not found:
            why = "no reference image was given" if tokens.startswith("image") else (
                "the VL text is empty (vl_text none)" if tokens == Tokens.PROMPT else "the input is empty")
            raise UserError(f"selects no positions because {why}", field="tokens", value=tokens)
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
    return load_reference(path)[0]


def load_reference(path: str | Path) -> tuple[Any, list[str]]:
    """(RGB image, notes) of a reference file read as the camera meant it (vlbench.pixels: EXIF orientation, 16-bit
    and float ranges), or a one-line error naming it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        exists = path.exists()
    except (OSError, ValueError) as exc:  # a name too long, a NUL inside
        raise UserError(f"cannot open it ({getattr(exc, 'strerror', None) or exc})", field="image",
                        value=str(path)) from None
    if not exists:
        raise UserError("no such file", field="image", value=str(path))
    if path.is_dir():
        raise UserError("is a folder", field="image", value=str(path), fix="give an image file")
    if not path.is_file():  # a FIFO would block forever, a device never end
        raise UserError("not a regular file (a device, pipe or socket)", field="image", value=str(path))
    try:
        with Image.open(path) as img:
            img.load()
            return as_rgb(img, str(path))
    except UnidentifiedImageError:
        raise UserError("not an image PIL can read (PNG, JPEG, WebP …)", field="image", value=str(path)) from None
    except Image.DecompressionBombError as exc:  # not an OSError: it would escape as a traceback
        raise UserError(f"too many pixels to open safely ({exc.args[0].split(',')[0]})", field="image",
                        value=str(path)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"the image is damaged or truncated ({exc})", field="image", value=str(path)) from None


def check_layer_index(layer: int, n: int, name: str = "layer") -> int:
    """A hidden-state index against a VL whose hidden_states has `n` entries (precheck calls it from the config)."""
    if not -n <= layer < n:
        raise UserError(f"is out of range for this VL model (hidden_states has {n} entries, -1 is after the "
                        "final norm)", field=name, value=layer, fix=f"use -{n} … {n - 1}")
    return layer


def check_vl_text(processor, num_images: int, text: str | None, budget: int, system: str | None = None) -> None:
    """The VL input's text tokens within the caption budget: prepare's own count and words (_render, then _fit's),
    without the images' pixels."""
    rendered = _render(processor, num_images, text, system)
    _fit(processor, rendered, [None] * num_images, budget, None, system, sizes=False)


def vl_counts(processor, num_images: int, text: str | None, system: str | None = None) -> VLCounts:
    """The VL input's positions by role without the images' pixels (each image's tokens are what sizing decides):
    the rendered chat template tokenized as the processor tokenizes it, roles as _roles gives them."""
    rendered = _render(processor, num_images, text, system)
    enc = processor.tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    roles = _roles(processor, enc["input_ids"], enc["offset_mapping"], rendered, text, num_images, system)
    return VLCounts(template=roles.count(TEMPLATE), prompt=roles.count(PROMPT), images=num_images)


def min_image_tokens(image_processor, sizes: list[tuple[int, int]]) -> int:
    """The fewest image tokens these references can take together (fit_size's smallest cap)."""
    if not sizes:
        return 0
    factor = (image_processor.patch_size * image_processor.merge_size) ** 2
    smallest = {"longest_edge": factor, "shortest_edge": min(image_processor.size["shortest_edge"], factor)}
    return sum(image_token_count(image_processor, w, h, smallest) for (w, h) in sizes)


def check_text(text: str, field: str) -> None:
    """Refuse text the tokenizers cannot take: undecodable argv bytes arrive as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"is not valid UTF-8 (an undecodable byte at character {exc.start})", field=field,
                        fix="check the terminal's or the file's encoding") from None


def special_tokens(tokenizer) -> list[str]:
    """Every special and added token string of `tokenizer`, longest first: the tokenizer reads each one inside
    text as its control token (<|im_start|>, <|vision_start|>, <think>, …), never as characters."""
    tokens = {*tokenizer.get_added_vocab(), *getattr(tokenizer, "all_special_tokens", [])}
    return sorted((t for t in tokens if t and t.strip()), key=lambda t: (-len(t), t))


def check_special_tokens(tokenizer, text: str, field: str, model: str, fix: str = "remove it") -> None:
    """Refuse text that holds a special token: it would become a real control token (a forged chat turn or vision
    block), not text. One rule for every text a tokenizer reads: prompt, negative_prompt, VL texts."""
    for token in special_tokens(tokenizer):
        if token in text:
            kind = "vision token" if "vision" in token or token.endswith("_pad|>") else "special token"
            raise UserError(f"contains {token}, a {model} {kind} (it would be read as a control token, not as "
                            "text)", field=field, fix=fix)


def _messages(num_images: int, text: str | None, system: str | None = None) -> list[dict]:
    """The chat messages of one VL input: an optional system turn (issue 27), then the user turn (images, then text).
    Without `system` this is exactly the message list of every earlier vlbench version."""
    content: list[dict] = [{"type": "image"} for _ in range(num_images)]
    if text is not None:
        content.append({"type": "text", "text": text})
    messages = [{"role": "user", "content": content}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    return messages


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


def fitted_tokens(image_processor, sizes: list[tuple[int, int]], available: int) -> int | None:
    """The image tokens these references get when fitted to `available` (fit_size, then the processor's count);
    None when they cannot fit."""
    try:
        size = fit_size(image_processor, sizes, available)
    except ValueError:
        return None
    return sum(image_token_count(image_processor, w, h, size) for (w, h) in sizes)


@dataclass
class Prepared:
    """One (images, text) input, rendered, fitted to the budget and run through the processor: ready to forward."""

    inputs: dict  # the processor's tensors for this input alone (batch of 1, on the CPU)
    input_ids: list[int]
    roles: list[str]
    text: str | None
    source_sizes: list[tuple[int, int]]
    system: str | None = None  # issue 27: the system turn's text

    @property
    def length(self) -> int:
        return len(self.input_ids)


def _render(processor, num_images: int, text: str | None, system: str | None = None) -> str:
    """Validate the VL text (and system text) and render them, after the images, through the model's own chat
    template; `system` becomes a system turn before the user turn."""
    tokenizer = processor.tokenizer
    if not num_images and text is None:
        raise UserError("nothing to extract: no reference image and no VL text", field="vl_text", value="none",
                        fix="add a reference or give the VL a text")
    if text is not None:
        check_text(text, "vl_text")
    if text is not None and _SENTINEL in text:
        raise UserError("contains a reserved marker character", field="vl_text")
    if text is not None:  # the tokenizer parses special tokens in text: these would forge a vision block or a turn
        check_special_tokens(tokenizer, text, "vl_text", "Qwen3-VL")  # the engine names the prompt when it is the text
    if system is not None:
        check_text(system, "vl_system")
        if _SENTINEL in system:
            raise UserError("contains a reserved marker character", field="vl_system")
        check_special_tokens(tokenizer, system, "vl_system", "Qwen3-VL")
    return processor.apply_chat_template(_messages(num_images, text, system), add_generation_prompt=True,
                                         tokenize=False)


def _fit(processor, rendered: str, images: list, budget: int, max_image_tokens: int | None,
         system: str | None = None, sizes: bool = True, image_budget: int | None = None) -> dict | None:
    """The processor `size` for these images: text tokens are fixed, images take what is left of the budget, and at
    most `image_budget` (caption_plan: what the rest of the caption leaves them; None before issue 23's plan)."""
    text_tokens = len(processor.tokenizer(rendered, add_special_tokens=False)["input_ids"]) - len(images)
    if text_tokens > budget:
        if system is not None:
            raise UserError(f"the VL input with this system turn is {text_tokens} tokens, over the caption budget of "
                            f"{budget}", field="vl_system", fix="shorten the system text or the VL text")
        raise UserError(f"the VL input is {text_tokens} tokens, over the caption budget of {budget}",
                        field="vl_text", fix="shorten the text")
    if not images or not sizes:  # sizes=False: the text's count alone (precheck, no pixels)
        return None
    available = budget - text_tokens
    if max_image_tokens is not None:
        available = min(available, max_image_tokens)
    if image_budget is not None:
        available = min(available, image_budget)
    sizes = [img.size for img in images]
    for w, h in sizes:  # the processor refuses extreme aspect ratios (a ValueError deep inside it)
        try:
            image_token_count(processor.image_processor, w, h)
        except ValueError as exc:
            raise UserError(f"a {w}×{h} reference cannot be read by Qwen3-VL's processor ({exc})", field="image",
                            fix="crop or pad it") from None
    try:
        return fit_size(processor.image_processor, sizes, available)
    except ValueError:
        raise UserError(f"{len(images)} reference(s) cannot fit in {available} image tokens (caption budget "
                        f"{budget}, text {text_tokens})", field="image",
                        fix="shorten the text or use fewer images") from None


def prepare(vl, images: list, text: str | None, budget: int, max_image_tokens: int | None = None,
            system: str | None = None, image_budget: int | None = None) -> Prepared:
    """Everything before the forward: validation, chat template, budget fit, processor, roles (CPU only).
    `system`: a system turn's text (issue 27's vl_system); None: the stock template, no system turn.
    `image_budget`: the most image tokens the caption's plan leaves this input (caption_plan); None: no such limit."""
    return prepare_inputs(vl.processor, images, text, budget, max_image_tokens, system, image_budget)


def prepare_inputs(processor, images: list, text: str | None, budget: int,
                   max_image_tokens: int | None = None, system: str | None = None,
                   image_budget: int | None = None) -> Prepared:
    """`prepare` with the processor alone (no weights: vlbench.engine.precheck uses it before models load)."""
    if text is not None:  # a text too long for the budget whatever its content: refused before anything reads it

        check_text_bound(text, "vl_text", budget, max_token_chars(processor.tokenizer), "the caption budget")
    rendered = _render(processor, len(images), text, system)
    size = _fit(processor, rendered, images, budget, max_image_tokens, system, image_budget=image_budget)
    kwargs = {"images": images} if images else {}
    if size is not None:
        kwargs["size"] = size
    inputs = processor(text=[rendered], return_tensors="pt", return_offsets_mapping=True, **kwargs)
    offsets = inputs.pop("offset_mapping")[0].tolist()
    input_ids = inputs["input_ids"][0].tolist()
    roles = _roles(processor, input_ids, offsets, rendered, text, len(images), system)
    return Prepared(dict(inputs), input_ids, roles, text, [img.size for img in images], system)


def _to_device(vl, inputs: dict) -> dict:
    inputs = {k: v.to(vl.device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(vl.dtype)
    return inputs


def image_token_counts(processor, prep: Prepared) -> list[tuple[int, tuple[int, int]]]:
    """(tokens, token grid) of each image in a prepared input, as its Extraction will have them."""
    patch, merge = processor.image_processor.patch_size, processor.image_processor.merge_size
    out = []
    for t, h, w in _grid(prep):
        n = t * h * w // merge**2
        out.append((n, token_grid((w * patch, h * patch), n)))
    return out


def _finish(vl, prep: Prepared, hidden: torch.Tensor, grid: list) -> Extraction:
    processor = vl.processor
    patch, merge = processor.image_processor.patch_size, processor.image_processor.merge_size
    return Extraction(
        hidden_states=hidden,
        input_ids=prep.input_ids,
        roles=prep.roles,
        decoded=processor.tokenizer.decode(prep.input_ids, skip_special_tokens=False),
        vl_text=prep.text,
        image_sizes=[(w * patch, h * patch) for (_, h, w) in grid],
        source_sizes=prep.source_sizes,
        image_token_counts=[t * h * w // merge**2 for (t, h, w) in grid],
        vl_system=prep.system,
    )


def _grid(prep: Prepared) -> list:
    return prep.inputs["image_grid_thw"].tolist() if "image_grid_thw" in prep.inputs else []


@torch.inference_mode()
def forward(vl, prep: Prepared, attention_layer: int | None = None) -> Extraction:
    """One model call over one prepared input; with `attention_layer` (a decoder layer, 0-based) the same call also
    reads that one layer's VL-text -> image attention (AttentionProbe); without it, nothing is hooked."""
    if attention_layer is not None:
        return forward_batch(vl, [prep], attention_layer)[0]
    out = vl.model.model(**_to_device(vl, prep.inputs), output_hidden_states=True, use_cache=False, return_dict=True)
    hidden = torch.stack([h[0] for h in out.hidden_states])  # [layers + 1, L, D]
    return _finish(vl, prep, hidden, _grid(prep))


# ---------------------------------------------------------------- issue 17: one layer's prompt -> image attention
def decoder_layer_for(hidden_index: int, num_decoder_layers: int, field: str = "attention_layer") -> int:
    """The decoder layer (0-based) that produces hidden state `hidden_index` (output_hidden_states numbering: [0] the
    embeddings, [h] the output of decoder layer h-1, [-1] the last layer's output after the final norm)."""
    n = num_decoder_layers + 1
    if not -n <= hidden_index < n:
        raise UserError(f"is out of range for this VL model (hidden_states has {n} entries)", field=field,
                        value=hidden_index, fix=f"use 1 … {n - 1} or -1 … -{n - 1}")
    resolved = hidden_index % n
    if resolved == 0:
        raise UserError("is hidden state 0, the embeddings, which no attention produces", field=field,
                        value=hidden_index, fix=f"use 1 … {n - 1} (hidden state h: the attention of decoder layer h-1)")
    return resolved - 1


def attention_rows(module, hidden_states: torch.Tensor, position_embeddings, rows: list[int]) -> torch.Tensor:
    """Softmax attention probabilities of query positions `rows` over keys 0 … max(rows) in one self-attention module
    of Qwen3-VL's text model, for one sequence (batch of 1): [heads, len(rows), max(rows) + 1].

    Exactly what transformers' eager attention computes for those rows (q/k projections, q_norm/k_norm, the
    (m)RoPE cos/sin the layer received, repeat_kv for grouped KV heads, scaling, the causal mask, an fp32 softmax
    cast back to the query dtype), with transformers' own apply_rotary_pos_emb and repeat_kv. Memory: the
    [heads, rows, keys] scores of this one layer; no other layer's attention is ever formed. Rows of a right-padded
    batch item never see its padding (causal), so no padding mask is needed."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb, repeat_kv

    end = max(rows) + 1
    x = hidden_states[:, :end]
    hd = module.head_dim
    cos, sin = position_embeddings
    cos, sin = cos[:, :end], sin[:, :end]
    idx = torch.tensor(rows, device=x.device)
    q = module.q_norm(module.q_proj(x.index_select(1, idx)).view(1, len(rows), -1, hd)).transpose(1, 2)
    k = module.k_norm(module.k_proj(x).view(1, end, -1, hd)).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos.index_select(1, idx), sin.index_select(1, idx))
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    k = repeat_kv(k, module.num_key_value_groups)
    scores = torch.matmul(q, k.transpose(2, 3)) * module.scaling  # [1, heads, rows, end]
    future = torch.arange(end, device=x.device)[None, :] > idx[:, None]  # causal: row i sees keys j <= i
    scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)[0]


def prompt_image_attention(probs: torch.Tensor, image_positions: list[int]) -> torch.Tensor:
    """[heads, prompt rows, keys] probabilities -> one weight per image position, summing to 1:

        a_j = mean over heads h and prompt rows i of P[h, i, j]   (j an image position)
        w_j = a_j / sum over image positions j' of a_j'
    """
    cols = probs.float()[:, :, torch.tensor(image_positions, device=probs.device)]
    a = cols.mean(dim=(0, 1))
    return a / a.sum()


class AttentionProbe:
    """While entered: a forward hook on ONE decoder layer's self-attention reads each batch item's VL-text -> image
    attention (attention_rows, prompt_image_attention); removed on exit, so other forwards run unhooked."""

    def __init__(self, vl, layer: int, preps: list[Prepared]):
        self.module = vl.model.model.language_model.layers[layer].self_attn
        self.preps = preps
        self.results: list[torch.Tensor | None] = [None] * len(preps)
        self._handle = None

    def __enter__(self) -> "AttentionProbe":
        self._handle = self.module.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _hook(self, module, args, kwargs, output) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cos, sin = kwargs["position_embeddings"]
        for b, prep in enumerate(self.preps):
            prompt = [i for i, r in enumerate(prep.roles) if r == PROMPT]
            image = [i for i, r in enumerate(prep.roles) if r == IMAGE]
            if not prompt or not image:
                continue  # refused by the engine before the forward; nothing to read
            probs = attention_rows(module, hidden[b:b + 1], (cos[b:b + 1], sin[b:b + 1]), prompt)
            self.results[b] = prompt_image_attention(probs, image).cpu()


# Sequence-shaped processor outputs and the value a padded position gets; everything else is per image.
_PADDED = {"input_ids": None, "attention_mask": 0, "mm_token_type_ids": 0}  # None: the tokenizer's pad id
_PER_IMAGE = ("pixel_values", "image_grid_thw")


def collate(vl, preps: list[Prepared]) -> dict:
    """The batch of several prepared inputs, padded on the RIGHT, images concatenated in item order.

    Right padding leaves every real position where an unbatched forward has it: the causal mask
    never lets a real token see a later pad, and the 3-D mrope positions are computed from the
    attention mask (image inputs) or are 0, 1, 2, … from the left (text-only batches) — left padding
    would shift the latter. The result equals `processor(text=[…], images=[…], padding=True,
    padding_side="right")` when every item uses the same image `size`; collating per-item processor
    outputs also lets each item keep its own budget fit.
    """
    pad_id = vl.processor.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else pad_id
    longest = max(p.length for p in preps)
    keys = set().union(*(p.inputs for p in preps))
    unknown = keys - set(_PADDED) - set(_PER_IMAGE)
    if unknown:
        raise RuntimeError(f"cannot batch processor outputs {sorted(unknown)}")
    batch: dict = {}
    for key, fill in _PADDED.items():
        if key not in keys:
            continue
        fill = pad_id if fill is None else fill
        rows = []
        for p in preps:
            row = p.inputs[key]
            if row.shape != (1, p.length):
                raise RuntimeError(f"{key}: expected shape (1, {p.length}), got {tuple(row.shape)}")
            rows.append(torch.nn.functional.pad(row, (0, longest - p.length), value=fill))
        batch[key] = torch.cat(rows)
    for key in _PER_IMAGE:
        parts = [p.inputs[key] for p in preps if key in p.inputs]
        if parts:
            batch[key] = torch.cat(parts)
    return batch


@torch.inference_mode()
def forward_batch(vl, preps: list[Prepared], attention_layer: int | None = None) -> list[Extraction]:
    """One model call over several prepared inputs; each result as its own unbatched forward gives it.
    `attention_layer`: also read that decoder layer's VL-text -> image attention of each item (AttentionProbe)."""
    if len(preps) == 1 and attention_layer is None:
        return [forward(vl, preps[0])]
    inputs = preps[0].inputs if len(preps) == 1 else collate(vl, preps)
    probe = AttentionProbe(vl, attention_layer, preps) if attention_layer is not None else None
    if probe is not None:
        with probe:
            out = vl.model.model(**_to_device(vl, inputs), output_hidden_states=True, use_cache=False,
                                 return_dict=True)
    else:
        out = vl.model.model(**_to_device(vl, inputs), output_hidden_states=True, use_cache=False, return_dict=True)
    results = []
    for i, prep in enumerate(preps):  # each item's own copy: the batched tensors are freed on return
        hidden = torch.stack([h[i, :prep.length] for h in out.hidden_states])  # [layers + 1, L_i, D]
        ex = _finish(vl, prep, hidden, _grid(prep))
        if probe is not None:
            ex.image_attention, ex.attention_layer = probe.results[i], attention_layer
        results.append(ex)
    return results


def batch_memory_bytes(vl, preps: list[Prepared]) -> int:
    """Device memory a batched forward over `preps` may need on top of the weights (an upper estimate).

    The hidden states of every layer for the padded batch, plus each item's stacked copy, plus the
    largest per-layer transients (MLP intermediates, attention scores should SDPA fall back to the
    math kernel), plus the vision tower's activations and a fixed margin.
    """
    text, vision = vl.model.config.text_config, vl.model.config.vision_config
    itemsize = torch.empty((), dtype=vl.dtype).element_size()
    batch, longest, total = len(preps), max(p.length for p in preps), sum(p.length for p in preps)
    layers, width = text.num_hidden_layers + 1, text.hidden_size
    hidden = layers * width * (batch * longest + total) * itemsize
    mlp = 4 * batch * longest * text.intermediate_size * itemsize
    scores = 2 * batch * text.num_attention_heads * longest * longest * 4  # fp32 softmax in the worst case
    patches = [int(t * h * w) for p in preps for (t, h, w) in _grid(p)]
    vis = sum(8 * n * vision.hidden_size * 4 for n in patches)  # attention is per image: the largest one's scores
    vis += max((2 * vision.num_heads * n * n * 4 for n in patches), default=0)
    return hidden + mlp + scores + vis + (256 << 20)


@torch.inference_mode()
def extract(vl, images: list, text: str | None, budget: int, max_image_tokens: int | None = None) -> Extraction:
    """Run Qwen3-VL once over `images` (PIL, RGB) then `text`, through the model's own chat template.

    `budget` is the longest sequence the DiT will accept; references are downscaled (by the
    processor, aspect ratio kept) only when image + text tokens would not fit in it.
    """
    return forward(vl, prepare(vl, images, text, budget, max_image_tokens))


@torch.inference_mode()
def extract_batch(vl, items: list[tuple[list, str | None]], budget: int,
                  max_image_tokens: int | None = None) -> list[Extraction]:
    """`extract` over several (images, text) items in ONE model call (right-padded batch).

    Each item is rendered, fitted to the budget and tokenised exactly as `extract` would do it
    alone; each result has that item's own ids, roles and sizes, and its hidden states equal the
    unbatched ones up to float summation order (padding changes the attention kernels' reductions).
    """
    return forward_batch(vl, [prepare(vl, images, text, budget, max_image_tokens) for images, text in items])


def _roles(processor, input_ids, offsets, rendered, text, num_images, system: str | None = None) -> list[str]:
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
        templ = processor.apply_chat_template(_messages(num_images, _SENTINEL, system), add_generation_prompt=True,
                                              tokenize=False)
        prefix, suffix = templ.split(_SENTINEL)
        if prefix + text + suffix != rendered:
            raise RuntimeError("the chat template does not insert the VL text verbatim")
        total = max(end for _, end in offsets)
        lo, hi = total - len(suffix) - len(text), total - len(suffix)
        for i, (a, b) in enumerate(offsets):
            if roles[i] == TEMPLATE and a < hi and b > lo:
                roles[i] = PROMPT
    return roles
