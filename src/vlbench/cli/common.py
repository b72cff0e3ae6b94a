"""What every command shares: the parser class, model and recipe flags made from their schemas, inputs,
the console and the one rendering of errors as command-line text.

The recipe flags are generated from `vlbench.recipe`'s field metadata (flag = `--field-name`, help =
the field's help with its real default), the model flags from `vlbench.modelspec`. Command modules
import this module and nothing from each other; nothing below the command line sees an argparse
namespace: commands turn one into a ModelSpec, a Recipe and plain values first.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from vlbench.engine.build import open_engine
from vlbench import paths
from vlbench.config import load_settings
from vlbench.engine.precheck import check_plan, read_model_files
from vlbench.errors import UserError, word_failure
from vlbench.logs import quiet_libraries
from vlbench.metrics import DEFAULT_METRICS, DEFAULT_MODELS, METRICS, SOURCE_FLAGS, check_available, parse_metrics
from vlbench.metrics.score import SCORES, score_folder
from vlbench.metrics.tiny import ensure_tiny_metric_models
from vlbench.modelspec import (ATTENTION_BACKENDS, DEFAULT_VL, DEFAULT_ZIMAGE, DTYPE_NAMES, FAST_NOTE, OFFLOAD_POLICIES,
                               QUANTIZE_MODES, ModelSpec, resolve_model_spec)
from vlbench.pngs import read_png_metadata
from vlbench.prompts import check_prompt
from vlbench.recipe import Recipe, field_default, field_infos, format_value, load_recipe, parse_value
from vlbench.records import RunRecord
from vlbench.store import Store

# -1,-2,-5 is a value, not an option (argparse alone only takes "-1" for a negative number)
NEGATIVE_NUMBERS = re.compile(r"^-\d+(,-?\d+)*,?$|^-\d*\.\d+(e-?\d+)?$")


def flag_name(field: str) -> str:
    """The command line's word for a field or input: `image_layer` -> `--image-layer`."""
    return "--" + field.replace("_", "-")


def render(exc: UserError) -> str:
    return exc.render(flag_name)


def failure_text(error: str | None, data: dict | None) -> str | None:
    """A stored failure (a row's error and error_data, a JobFailed's reason and data) as the command line says it."""
    return word_failure(error, data, flag_name)


class HelpFormatter(argparse.HelpFormatter):
    """Help lines are literal text. argparse %-formats each one (for `%(default)s`, which vlbench never uses: the
    real default is written into the text), so a bare "95%" would crash every help page that shows it, and on
    Python 3.14 the parser's construction. This is the one place a `%` in help text is escaped."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return (action.help or "").replace("%", "%%")


class Parser(argparse.ArgumentParser):
    """Every vlbench parser: literal help text (HelpFormatter), no prefix abbreviations (`--see` must not quietly
    mean `--seed`), -1,-2 taken as values, and one-line errors."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBERS

    def error(self, message: str) -> None:  # one line, not usage + error
        raise UserError(f"{message} (see {self.prog} --help)")


def add_debug_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")


# ---------------------------------------------------------------- models
def add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (flags over VLBENCH_* environment variables over config.toml's [models]; "
                             "with no model named anywhere, the tiny random models)")
    g.add_argument("--zimage", metavar="ID_OR_DIR", help=f"Z-Image pipeline: a hub id ({DEFAULT_ZIMAGE}) or a folder")
    g.add_argument("--vl", metavar="ID_OR_DIR", help=f"Qwen3-VL model: a hub id ({DEFAULT_VL}) or a folder "
                                                     f"(default with --zimage: {DEFAULT_VL})")
    g.add_argument("--tiny", action="store_true",
                   help="the built-in tiny RANDOM-WEIGHT models, whatever is configured (no download; images are noise)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    g.add_argument("--dtype", metavar="{" + ",".join(DTYPE_NAMES) + "}", help="default: bf16 on GPU, fp32 on CPU")
    g.add_argument("--offload", metavar="{" + ",".join(OFFLOAD_POLICIES) + "}",
                   help="GPU placement (default none): none = all resident; cpu = only the model in use on the GPU "
                        "(the encoders wait in host memory); group = as cpu, and the DiT streams the blocks that "
                        "do not fit --gpu-memory (16/12 GB cards; CUDA only); sequential = layer-by-layer from "
                        "host memory (smallest, slowest). cpu/sequential: no effect with --device cpu")
    g.add_argument("--gpu-memory", type=float, metavar="GIB",
                   help="GPU memory vlbench may use, in GiB (a hard cap; --offload group plans to it); "
                        "default: the whole card")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the DiT's repeated blocks (first image slower; no recompile per caption length)")
    g.add_argument("--quantize", metavar="{" + ",".join(QUANTIZE_MODES) + "}",
                   help="fp8 = torchao float8 matmuls in the DiT (needs --compile and an fp8 GPU: Ada, Hopper, "
                        "Blackwell; images drift from bf16); default none (exact)")
    g.add_argument("--attention", metavar="{" + ",".join(ATTENTION_BACKENDS) + "}",
                   help="the DiT's attention kernel (default sdpa: torch chooses)")
    g.add_argument("--fast", action="store_true", default=None,
                   help="fp8 + --compile with static graphs per caption bucket + the fastest mask-taking attention "
                        "kernel timed on the GPU (fp8 GPUs only; images drift from bf16)")
    add_debug_flag(p)


def add_batch_flag(g) -> None:
    g.add_argument("--batch", type=int, metavar="N",
                   help="run up to N images of one shape (size, steps, guidance; caption bucket with --fast) in one "
                        "DiT call (default 1: one image per call, bit-exact); each image keeps its seed and caption, close "
                        "to its batch-1 image, not equal (README: Performance); img2img, schedules and "
                        "attention-weighted mixes run alone")


def batch_size(value: int | None, executor_kind: str) -> int:
    """--batch N checked: a positive count (the local executor batches consecutive jobs; ray, each actor's)."""
    if value is None:
        return 1
    if value < 1:
        raise UserError("must be >= 1", field="batch", value=value)
    return value


def model_spec(args: argparse.Namespace):
    """The ModelSpec of a command: config.toml, then the environment, then these flags."""
    return resolve_model_spec(load_settings(create=False).models.to_dict(), flags=model_flags(args))


def model_flags(args: argparse.Namespace) -> dict:
    """The model flags a command was given (None: not given), for resolve_model_spec."""
    return {f: getattr(args, f, None) for f in ModelSpec.__dataclass_fields__}


def engine(spec, console, cache_dir=None, files=None):
    """An Engine whose models load on first use, with status lines on the console; `files` (precheck's
    ModelFiles) are the processor and tokenizer the plan checks read, reused rather than read again."""
    if spec.tiny:
        console.print("[yellow]models: the built-in tiny RANDOM-WEIGHT ones; the images are noise (name real ones "
                      "with --zimage/--vl or in config.toml)[/yellow]")
    if spec.fast:
        console.print(f"[yellow]{escape(FAST_NOTE)}[/yellow]")
    engine = open_engine(spec, on_status=lambda s: console.print(f"[dim]{escape(s)}[/dim]"), cache_dir=cache_dir,
                         files=files)
    for warning in engine.models.warnings:  # CUDA unusable: say so before minutes of CPU work
        console.print(f"[bold red]warning: {escape(warning)}[/bold red]")
    return engine


# ---------------------------------------------------------------- recipes
def add_recipe_flags(p: argparse.ArgumentParser, only: Iterable[str] | None = None, recipe_file: bool = True) -> None:
    """One flag per Recipe field (or those in `only`), with the field's help and real default."""
    g = p.add_argument_group("recipe (flags override --recipe; TOML keys are the same names with _)"
                             if recipe_file else "recipe")
    if recipe_file:
        g.add_argument("--recipe", metavar="FILE.toml", help="read the recipe from a TOML file (a partial one is fine)")
    for name, info in field_infos().items():
        if only is not None and name not in only:
            continue
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": _field_help(name, info, field_default(name))}
        if info.kind == "bool":
            kwargs.update(action="store_const", const=True)
        else:
            kwargs.update(type=_parser_of(name), metavar=_metavar(info))
        g.add_argument(flag_name(name), **kwargs)


def _field_help(name: str, info, default: Any) -> str:
    text = info.help
    if info.choices is not None:
        text += " — " + "; ".join(f"{c.value}: {c.help}" for c in info.choices)
    shown = "not set" if default is None else (format_value(name, default) or "empty")
    text += f" (default {shown}"
    if info.when:
        text += f"; has an effect only {info.when}"
    return text + ")"


def _metavar(info) -> str | None:
    if info.choices is not None:
        return "{" + ",".join(info.choices.values()) + "}"
    return {"floats": "W1,W2", "int": "N", "float": "X", "vl_text": "TEXT", "str": "TEXT",
            "schedule": "K:SOURCE,…"}.get(info.kind)


def _parser_of(name: str):
    def parse(text: str):
        return parse_value(name, text)

    parse.__name__ = name  # argparse names the type in its own messages
    return parse


def recipe_from_args(args: argparse.Namespace):
    """The Recipe the flags describe: the defaults (or --recipe FILE), then every flag the user set."""
    overrides = {name: getattr(args, name) for name in field_infos() if getattr(args, name, None) is not None}
    if getattr(args, "recipe", None):
        return load_recipe(args.recipe, overrides)
    return Recipe.from_dict(overrides)


# ---------------------------------------------------------------- inputs
def add_input_flags(p: argparse.ArgumentParser, prompt_required: bool = True) -> None:
    p.add_argument("--image", action="append", default=[], metavar="REF",
                   help="reference image; repeat for several (each gets its own vision block)")
    p.add_argument("--prompt", required=prompt_required, help="the prompt")


def single_image_inputs(args: argparse.Namespace, suffix: str):
    """(out path, prompt, recipe, references, model spec, model files) of embed/generate, each checked before any
    model loads (model files: vlbench.engine.precheck's, None when they cannot be read here)."""
    out = check_out(args.out, suffix)
    if getattr(args, "from_png", None):  # the recipe, seed, prompt and references a PNG records; flags override them
        prompt, recipe, refs = recorded_inputs(args)
    else:
        if args.prompt is None:
            raise UserError("give the prompt (or --from IMAGE.png to re-run a recorded one)", field="prompt")
        prompt = check_prompt(args.prompt)
        recipe = recipe_from_args(args)
        recipe.check_inputs(len(args.image))
        refs = open_references(args.image)
    spec = model_spec(args)
    files = read_model_files(spec)
    check_plan(files, [(recipe, prompt, refs)])
    return out, prompt, recipe, refs, spec, files


def recorded_inputs(args: argparse.Namespace):
    """(prompt, recipe, references) of `--from IMAGE.png`: the run record in the PNG's metadata, every flag the user
    set over it; a recorded reference must still be the same picture (its sha256)."""
    path = args.from_png
    if getattr(args, "recipe", None):
        raise UserError("cannot be combined with --recipe: the PNG holds the recipe", field="from_png", value=path,
                        fix="drop one (flags still override the PNG's fields)")
    try:
        data = read_png_metadata(path)
    except FileNotFoundError:
        raise UserError("no such file", field="from_png", value=path) from None
    except Exception as exc:  # noqa: BLE001 — not a PNG, damaged
        raise UserError(f"cannot read it as a PNG ({type(exc).__name__})", field="from_png", value=path) from None
    if not data or not isinstance(data.get("recipe"), dict):
        raise UserError("holds no vlbench run record (it was not made by vlbench, or its metadata was stripped)",
                        field="from_png", value=path, fix="give a PNG vlbench wrote (generate, run, the workbench)")
    record = RunRecord.from_json(data)
    overrides = {name: getattr(args, name) for name in field_infos() if getattr(args, name, None) is not None}
    try:
        recipe = Recipe.from_dict({**record.recipe, **overrides})
    except UserError as exc:
        raise exc.within(f"{path} (its recorded recipe)") from None
    prompt = check_prompt(args.prompt if args.prompt is not None else record.prompt)
    if args.image:
        refs = open_references(args.image)
    else:
        refs = open_references(record.reference_paths)
        for ref, recorded in zip(refs, record.references):
            if recorded.get("sha256") and ref.sha256 != recorded["sha256"]:
                raise UserError(f"{ref.path}: not the picture {path} was made from (its sha256 differs)",
                                field="from_png", value=path, fix="give the original with --image")
    recipe.check_inputs(len(refs))
    return prompt, recipe, refs


def open_references(paths: list[str]) -> list:
    """Each reference read once (pixels and content hash); one line naming a bad one."""
    from vlbench.engine.engine import Reference

    return [Reference.open(p) for p in paths]


def check_out_dir(path: str, field: str = "output_dir") -> Path:
    """An output folder: created if missing, refused in one line when it cannot hold the run's files."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError("is a file", field=field, value=path, fix="give a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{existing} is a file, not a folder", field=field, value=path)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write in {existing} (read-only or not yours)", field=field, value=path,
                        fix="choose a folder you can write to")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create it ({exc.strerror or type(exc).__name__})", field=field, value=path) from None
    return out


def check_data_dir() -> Path:
    """The data folder (run store, outputs, log) exists and is writable, or one line naming it and the fix."""
    where = os.environ.get("VLBENCH_DATA_DIR") or "the data folder"
    try:
        data = paths.data_dir()
    except OSError as exc:
        raise UserError(f"{where}: cannot create it ({exc.strerror or type(exc).__name__})",
                        fix="set VLBENCH_DATA_DIR to a folder you can write") from None
    if not os.access(data, os.W_OK | os.X_OK) or paths.store_path().exists() and not os.access(
            paths.store_path(), os.R_OK | os.W_OK):
        raise UserError(f"data folder {data}: cannot write there (read-only or not yours)",
                        fix="set VLBENCH_DATA_DIR to a folder you can write")
    return data


def check_out(path: str, suffix: str, field: str = "out") -> Path:
    """An output file path: the right suffix, a folder that exists and is one, not a folder itself."""
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise UserError(f"must end in {suffix}", field=field, value=path)
    if out.is_dir():
        raise UserError("is a folder", field=field, value=path, fix=f"give a file name ending in {suffix}")
    parent = out.parent
    if not parent.exists():
        raise UserError(f"folder {parent} does not exist", field=field, value=path, fix="create it first")
    if not parent.is_dir():
        raise UserError(f"{parent} is a file, not a folder", field=field, value=path)

    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write in {parent} (read-only or not yours)", field=field, value=path)
    return out


def image_bytes(width: int, height: int) -> int:
    """What one PNG may take on disk: RGB bytes (noise does not compress) plus its metadata chunk."""
    return width * height * 3 + 32 * 1024


def check_free_space(path: str | Path, need: int, out, field: str) -> None:
    """Warn (one line) when the disk holding `path` has less free space than the command will write (estimated);
    the work itself is safe on a full disk: it stops with one line and resumes."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if free < need:
        out.print(f"[yellow]warning: {flag_name(field)} {escape(path)}: {_size(free)} free on its disk, and this "
                  f"writes about {_size(need)}; it stops when the disk is full (re-run to resume)[/yellow]")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# ---------------------------------------------------------------- output
def console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)  # status lines carry paths: never wrap them


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(str(text))


def warn(out, warnings: list[str]) -> None:
    for w in warnings:
        out.print(f"[yellow]warning: {escape(w)}[/yellow]")


def open_store(out):
    """The run store, or None with one warning line: the output folder is a run's primary record."""
    try:
        return Store()
    except Exception as exc:  # noqa: BLE001
        out.print(f"[yellow]run store unavailable ({escape(type(exc).__name__)}: {escape(exc)}); "
                  "results are recorded in the output folder only[/yellow]")
        return None


# ---------------------------------------------------------------- metrics (run --metrics, score)
def add_metric_flags(p, in_run: bool):
    g = p.add_argument_group("metrics")
    names = ",".join(METRICS)
    if in_run:
        g.add_argument("--metrics", nargs="?", const=",".join(DEFAULT_METRICS), default=None, metavar="LIST",
                       help=f"score the images when the run ends, then print the statistics: some of {names} "
                            f"(no list: {','.join(DEFAULT_METRICS)})")
    else:
        g.add_argument("--metrics", default=None, metavar="LIST",
                       help=f"comma-separated, from {names} (default {','.join(DEFAULT_METRICS)})")
    g.add_argument("--siglip", metavar="ID_OR_DIR", help=f"SigLIP 2 model (default {DEFAULT_MODELS['siglip']})")
    g.add_argument("--clip", metavar="ID_OR_DIR", help=f"CLIP model for clip_t, clip_i (default {DEFAULT_MODELS['clip']})")
    g.add_argument("--dino", metavar="ID_OR_DIR", help=f"DINO ViT model (default {DEFAULT_MODELS['dino']})")
    g.add_argument("--dinov2", metavar="ID_OR_DIR", help=f"DINOv2 model for dinov2 (default {DEFAULT_MODELS['dinov2']})")
    g.add_argument("--vgg", metavar="ID_OR_DIR",
                   help=f"VGG-19 (torchvision layout, model.safetensors) for style_gram (default {DEFAULT_MODELS['vgg']})")
    g.add_argument("--vqa", metavar="ID_OR_DIR",
                   help=f"Qwen3-VL judge for vqascore, content_leak (default: vlbench run's own Qwen3-VL; "
                        f"vlbench score: {DEFAULT_MODELS['vqa']})")
    g.add_argument("--pickscore", metavar="ID_OR_DIR", help=f"PickScore model (default {DEFAULT_MODELS['pickscore']})")
    g.add_argument("--pickscore-processor", metavar="ID_OR_DIR",
                   help=f"PickScore's processor (default {DEFAULT_MODELS['pickscore_processor']})")
    return g


def metrics_choice(args, in_run: bool):
    """The metrics a command computes (None: no scoring pass), checked before any model loads."""
    if args.metrics is None and in_run:
        given = [k for k in SOURCE_FLAGS if getattr(args, k, None)]
        if given:
            raise UserError("chooses a metric model; it has an effect only with --metrics", field=given[0])
        return None
    metrics = parse_metrics(args.metrics)
    check_available(metrics)
    size = getattr(args, "metrics_batch_size", None) if in_run else getattr(args, "batch_size", None)
    if size is not None and size < 1:
        raise UserError("must be >= 1", field="metrics_batch_size" if in_run else "batch_size", value=size)
    return metrics


def metric_sources(args, tiny_models: bool = False, console=None) -> dict[str, str]:
    """The model of each metric family: the flags, or the tiny random ones with --tiny — or, when no flag names a
    metric model and the images come from the tiny models (`tiny_models`: nothing named them), the tiny metric
    models too: "nothing named → the tiny models" reaches the metric models (they would be downloaded)."""
    given = {k: getattr(args, k) for k in SOURCE_FLAGS if getattr(args, k, None)}
    if getattr(args, "tiny", False):
        if given:
            raise UserError(f"cannot be combined with {flag_name(next(iter(given)))}", field="tiny", fix="drop one")

        return ensure_tiny_metric_models().sources()
    if tiny_models and not given:
        if console is not None:
            console.print("[yellow]metric models: the built-in tiny RANDOM-WEIGHT ones, as the image models are; the "
                          "scores mean nothing (name real ones with --siglip, --clip, … or run with real "
                          "models)[/yellow]")
        return ensure_tiny_metric_models().sources()
    return given


def check_metric_sources(metrics, sources: dict[str, str], shared: Iterable[str] = ()) -> None:
    """Offline, a metric model that is neither a folder nor in the Hugging Face cache is one line now, not minutes
    of download retries after the run. `shared`: families the run's own models serve (the Qwen3-VL judge)."""
    families = {METRICS[m].family for m in metrics} - set(shared)
    needed = []
    for family in sorted(families & set(DEFAULT_MODELS)):
        needed.append((family, sources.get(family) or DEFAULT_MODELS[family]))
        if family == "pickscore":
            needed.append(("pickscore_processor", sources.get("pickscore_processor")
                           or DEFAULT_MODELS["pickscore_processor"]))
    missing = [(family, source) for family, source in needed if not _local_model(source)]
    if not missing:
        return
    unreachable = _hub_unreachable()
    if unreachable:
        family, source = missing[0]
        others = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"metric model {source}{others} is not in the Hugging Face cache and {unreachable}",
                        field=family, fix=f"download it where there is a network (`hf download {source}`), name a "
                                          f"local folder with {flag_name(family)} DIR, or score with --tiny "
                                          "(random weights: the scores mean nothing)")


def _local_model(source: str) -> bool:
    """A folder, or a hub id already in the Hugging Face cache (no network is asked)."""
    if Path(source).expanduser().exists():
        return True
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(source, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 — not cached, or not a repo id: the loader says which
        return False


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (HF_HUB_OFFLINE, no route, no name), or None: one connection
    attempt of at most `timeout` seconds instead of the hub client's retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlsplit(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host} cannot be reached (offline? {exc.strerror or type(exc).__name__})"
    return None


def score(out: Path, metrics, sources: dict, device, dtype, batch_size: int, store, con, shared=None,
          shared_sources=None, judge_dtype=None) -> None:
    """The scoring pass with its progress and summary lines (run --metrics and score share it). `shared`: models
    the run already holds (the Qwen3-VL judge), by family."""
    import torch

    from vlbench.metrics.models import MetricModels

    quiet_libraries()  # "Loading weights" bars: the status lines say what loads
    models = MetricModels(sources, device=device, dtype=dtype or torch.float32,
                          on_status=lambda t: con.print(f"[dim]{escape(t)}[/dim]"), shared=shared,
                          shared_sources=shared_sources, judge_dtype=judge_dtype)
    try:
        summary = score_folder(out, metrics, models, batch_size=batch_size, store=store, console=con)
    except KeyboardInterrupt:
        con.print(f"[yellow]scoring interrupted; scored images are kept in {escape(out / SCORES)}. "
                  "Re-run to resume.[/yellow]")
        raise
    for line in summary.warnings:
        con.print(f"[yellow]warning: {escape(line)}[/yellow]")
    for line in summary.problems:
        con.print(f"[red]{escape(line)}[/red]")
    con.print(f"scored {summary.scored} images ({summary.values} values: {', '.join(metrics)}), "
              f"{summary.skipped} already scored; {summary.stored} run-history rows updated → {escape(out / SCORES)}")
    return summary


def rewrite_report(out: Path) -> None:
    from vlbench.analysis.report import write_folder_report

    write_folder_report(out)


# ---------------------------------------------------------------- long sweeps (run, search)
def sigterm_as_interrupt():
    """`kill` ends a sweep like Ctrl-C (its report written, its folder resumable); returns the handler to restore
    (None off the main thread, where signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def release(previous, executor, store) -> None:
    """On the way out of a sweep: the SIGTERM handler back, the executor's workers and the store closed."""
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    if executor is not None:
        executor.close()
    if store is not None:
        store.close()
