"""Tiny random Qwen3-VL and Z-Image models, built offline in the real hub layouts.

They load through the same `from_pretrained` code as the published checkpoints, so every
path of vlbench runs end to end without a download. Their weights are random: images are noise.
Built once into the platformdirs cache and rebuilt when missing or when the recipe below changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

# Bump when anything below changes what is written: cached builds with another value are rebuilt.
TINY_RECIPE_VERSION = "3"

# Qwen's special tokens, in Qwen's order (ids follow the BPE vocabulary, as in the real tokenizer).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
QWEN_PLAIN_ADDED = ["<tool_call>", "</tool_call>", "<think>", "</think>"]

# Qwen3's pre-tokenisation regex (byte-level BPE on top).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Chat templates with the same output as the published ones for the messages vlbench sends
# (system / user / assistant turns; image and text content items; Qwen3's enable_thinking switch).
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{%- if message.content is string -%}{{- message.content -}}"
    "{%- else -%}{%- for content in message.content -%}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'text' in content -%}{{- content.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}{%- endif -%}"
)

_CORPUS = [
    "Homer Simpson eating spaghetti in a small kitchen at night.",
    "A watercolor painting of a lighthouse on a rocky coast, soft morning light.",
    "A photo of a red fox sitting in fresh snow, shallow depth of field.",
    "Describe this image. Generate an image following this description.",
    "An oil painting of a city street in the rain, neon signs, reflections.",
    "A cat, a dog and a bird; the quick brown fox jumps over the lazy dog 0123456789.",
]

# Sizes. The VL text width must equal the DiT's caption width, as 2560 does for the real pair.
HIDDEN = 64
VL_LAYERS = 16  # deep enough for the seed's layer sweeps (-1 … -15)
TEXT_ENCODER_LAYERS = 4
DIT_AXES_LENS = [256, 64, 64]  # caption budget 256 - 32 = 224 tokens


@dataclass(frozen=True)
class TinyModels:
    vl: Path
    zimage: Path


def tiny_cache_root() -> Path:
    override = os.environ.get("VLBENCH_CACHE_DIR")
    if override:
        return Path(override) / "tiny"

    import platformdirs  # lazy: the engine's benchmarks run on GPU machines without it

    return Path(platformdirs.user_cache_dir("vlbench")) / "tiny"


def _stamp() -> str:
    import diffusers
    import transformers

    key = f"{TINY_RECIPE_VERSION}|{transformers.__version__}|{diffusers.__version__}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def built_tiny_models(root: Path | None = None) -> TinyModels | None:
    """The tiny model dirs when already built and current, else None (nothing is built)."""
    root = Path(root) if root is not None else tiny_cache_root()
    models = TinyModels(vl=root / "qwen3-vl-tiny", zimage=root / "z-image-tiny")
    stamp_file = root / "STAMP"
    if stamp_file.exists() and stamp_file.read_text() == _stamp() and models.vl.is_dir() and models.zimage.is_dir():
        return models
    return None


def ensure_tiny_models(root: Path | None = None) -> TinyModels:
    """Return the tiny model dirs, building them if missing or stale (a few seconds on CPU)."""
    root = Path(root) if root is not None else tiny_cache_root()
    stamp = _stamp()
    models = built_tiny_models(root)
    if models is not None:
        return models
    models = TinyModels(vl=root / "qwen3-vl-tiny", zimage=root / "z-image-tiny")
    root.mkdir(parents=True, exist_ok=True)

    from vlbench.logs import quiet_libraries  # logs -> paths -> platformdirs (lazy, as platformdirs above)

    quiet_libraries()  # transformers' "Writing model shards" bars are not the user's business
    # Build into a temporary sibling and rename, so a killed build never leaves a half model.
    tmp = root.with_name(root.name + f".building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build_tiny_vl(tmp / models.vl.name)
    build_tiny_zimage(tmp / models.zimage.name)
    (tmp / "STAMP").write_text(stamp)
    (tmp / "README.txt").write_text(
        "Tiny RANDOM-WEIGHT models built by vlbench for its tests and its tiny mode. Images are noise.\n"
    )
    install_built(tmp, root, (models.vl.name, models.zimage.name, "STAMP", "README.txt"))
    return models


def install_built(tmp: Path, root: Path, names) -> None:
    """Move freshly built entries from `tmp` into `root`, replacing stale ones, then drop `tmp`.

    Models are built into a temporary sibling first, so a killed build never leaves a half model.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(tmp / name, target)
    shutil.rmtree(tmp, ignore_errors=True)


def build_tokenizer(chat_template: str):
    """A byte-level BPE with the Qwen special tokens, wrapped as transformers' Qwen2Tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    tok = Qwen2Tokenizer(tokenizer_object=bpe, errors="replace", unk_token=None, bos_token=None,
                         eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS})
    tok.add_tokens(QWEN_PLAIN_ADDED)
    tok.chat_template = chat_template
    tok.model_max_length = 131072
    return tok


def build_tiny_vl(out: Path) -> None:
    import torch
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tok = build_tokenizer(QWEN3_VL_CHAT_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    head_dim = 16
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=VL_LAYERS,
            num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_interleaved": True,
                             "mrope_section": [2, 3, 3]},  # sums to head_dim / 2
            tie_word_embeddings=True, pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
            temporal_patch_size=2, out_hidden_size=HIDDEN, num_position_embeddings=64,
            deepstack_visual_indexes=[1],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.save_pretrained(out)
    # The published preprocessing values (patch 16, merge 2, temporal 2, mean/std 0.5, pixel bounds).
    size = {"shortest_edge": 65536, "longest_edge": 16777216}
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, merge_size=2, temporal_patch_size=2, size=size,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    video_processor = Qwen3VLVideoProcessor(
        patch_size=16, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 4096, "longest_edge": 25165824},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tok,
                                 video_processor=video_processor, chat_template=QWEN3_VL_CHAT_TEMPLATE)
    processor.save_pretrained(out)
    _note(out, "qwen3-vl")


def build_tiny_zimage(out: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tok = build_tokenizer(QWEN3_CHAT_TEMPLATE)
    torch.manual_seed(0)
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=TEXT_ENCODER_LAYERS,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
            pad_token_id=tok.pad_token_id,
        )
    ).eval()
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2, n_refiner_layers=2,
        n_heads=2, n_kv_heads=2, cap_feat_dim=HIDDEN, axes_dims=[8, 12, 12], axes_lens=DIT_AXES_LENS,
    ).eval()
    # A narrow Flux-shaped VAE: 16 latent channels, 8x downsampling, Flux's scaling and shift, no quant convs.
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tok,
                          transformer=transformer)
    pipe.save_pretrained(out)
    _note(out, "z-image")


def _note(out: Path, kind: str) -> None:
    (out / "VLBENCH_TINY.json").write_text(json.dumps({"kind": kind, "random_weights": True,
                                                       "version": TINY_RECIPE_VERSION}) + "\n")


def is_tiny(path: str | Path) -> bool:
    """True for a model dir vlbench built itself (random weights)."""
    return (Path(path) / "VLBENCH_TINY.json").is_file()
