"""Embedding diagnostics: how Qwen3-VL's hidden states compare with what Z-Image's DiT was trained on.

For one (references, prompt), per VL layer and per token role (image, markers, text, prompt,
attention sinks): the RMS; the per-dimension std ratio against Qwen3-4B's encoding of the same
prompt at Z-Image's layer (-2), both directions, naming the most extreme dimensions; and the cosine
of position-aligned text tokens (the VL's `text` selection is Qwen3-4B's template token for token).
Each again after every normalisation mode, through the same Engine code a recipe uses. One VL
forward (engine.extraction) and one Qwen3-4B forward (all layers) per diagnosis.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from vlbench.engine import blend
from vlbench.engine.calibrate import load_stats, qwen3_hidden_states
from vlbench.engine.encode import template_ids
from vlbench.engine.extract import IMAGE, PROMPT, TEMPLATE, VISION_END, VISION_START
from vlbench.errors import UserError
from vlbench.files import atomic_write, atomic_write_text, read_text_file
from vlbench.recipe import PER_REFERENCE_NORMALIZATIONS, Normalization
from vlbench.recipe import Recipe

FORMAT = "vlbench-diagnostics-1"
DIAGNOSTICS = "diagnostics.json"
ZIMAGE_LAYER = -2  # the Qwen3-4B layer Z-Image conditions on (hidden_states[-2])
ROLE_GROUPS = {"image": (IMAGE,), "markers": (VISION_START, VISION_END), "text": (TEMPLATE, PROMPT),
               "prompt": (PROMPT,)}
ROLES = (*ROLE_GROUPS, "sink")  # sink rows are kept out of every other role
MODES = (Normalization.NONE, Normalization.PER_DIM, Normalization.PER_DIM_SCALE, Normalization.INSTANCE,
         Normalization.PER_REF_MEAN)  # those a full selection can take
PER_REFERENCE_MODES = PER_REFERENCE_NORMALIZATIONS  # need a reference (they move each reference's image rows only)
OUTLIER_RATIO = 8.0  # as blend.outlier_dims: a dimension is off when its std ratio is beyond 8x either way
EXTREMES = 3  # dimensions named in each direction
DEFAULT_LAYERS = (-1, -2, -5)
MAX_RUN_DIAGNOSES = 8  # (reference, prompt) pairs diagnosed after an experiment run


# ---- statistics: pure functions over [L, D] rows ----
def std_ratio(rows: torch.Tensor, ref_std: torch.Tensor) -> torch.Tensor:
    """Per-dimension population std of rows [n, D] over ref_std [D] -> float32 [D]."""
    return rows.float().std(0, correction=0) / ref_std.float().clamp_min(torch.finfo(torch.float32).tiny)


def role_stats(rows: torch.Tensor, ref_std: torch.Tensor) -> dict[str, Any]:
    """RMS of rows [n, D]; with 2+ rows, their std ratio against ref_std [D]: median, outliers, extremes."""
    out: dict[str, Any] = {"n": int(rows.shape[0]), "rms": float(blend.rms(rows))}
    if rows.shape[0] < 2:
        return out
    ratio = std_ratio(rows, ref_std)
    odd = blend.outlier_dims(rows, ref_std, OUTLIER_RATIO)
    k = min(EXTREMES, ratio.numel())
    top, low = torch.topk(ratio, k), torch.topk(ratio, k, largest=False)
    out.update(std_ratio_median=float(ratio.median()), too_large=len(odd["too_large"]),
               too_small=len(odd["too_small"]),
               largest=[[int(d), float(r)] for r, d in zip(top.values, top.indices)],
               smallest=[[int(d), float(r)] for r, d in zip(low.values, low.indices)])
    return out


def aligned_cosine(a: torch.Tensor, b: torch.Tensor, skip: set[int] = frozenset()) -> dict[str, Any] | None:
    """Cosine of row i of a [n, D] with row i of b [n, D], rows in `skip` left out -> mean, min, n."""
    keep = [i for i in range(a.shape[0]) if i not in skip]
    if not keep:
        return None
    idx = torch.tensor(keep)
    cos = torch.nn.functional.cosine_similarity(a.float()[idx], b.float()[idx].to(a.device), dim=-1)
    return {"mean": float(cos.mean()), "min": float(cos.min()), "n": len(keep)}


# ---- one diagnosis ----
def diagnose(engine, refs: list, prompt: str, layers: tuple[int, ...] | None = DEFAULT_LAYERS,
             calibration: str | Path | None = None) -> dict[str, Any]:
    """Diagnostics of (refs, prompt) at every VL layer; `layers` are the ones tables show (all: None)."""
    ex = engine.extraction(refs, prompt, None)
    pipe = engine.models.text_pipe
    q_hidden, _ = qwen3_hidden_states(pipe, prompt)
    q_hidden = q_hidden.float()
    q_ids, _ = template_ids(pipe.tokenizer, prompt)
    n_vl, n_q = ex.num_layers, q_hidden.shape[0]
    selected = [ex.check_layer(l, "--layers") for l in (layers or range(-n_vl, 0))]
    selected = list(dict.fromkeys(l - n_vl if l >= 0 else l for l in selected))

    q_ref = q_hidden[ZIMAGE_LAYER]
    q_ref_sinks = set(blend.sink_positions(q_ref))
    q_keep = [i for i in range(q_ref.shape[0]) if i not in q_ref_sinks]
    ref_std = q_ref[q_keep].std(0, correction=0)
    text_pos = ex.positions("text")
    aligned = [ex.input_ids[p] for p in text_pos] == list(q_ids)

    notes: list[str] = []
    if not aligned:
        notes.append(f"the VL's text positions ({len(text_pos)} tokens) are not Qwen3-4B's template ids "
                     f"({len(q_ids)} tokens): position-aligned cosines are left out")
    modes, cal_path = [Normalization.NONE], None
    try:
        stats = load_stats(calibration, engine.models)
        modes += [m for m in MODES[1:] if refs or m not in PER_REFERENCE_MODES]
        cal_path = str(stats.path)
    except UserError as exc:
        notes.append(f"{', '.join(MODES[1:])} columns left out: {exc}")

    per_layer = []
    for layer in range(-n_vl, 0):
        h = ex.hidden_states[layer].float()
        sinks = set(blend.sink_positions(h))
        entry: dict[str, Any] = {"layer": layer, "sinks": sorted(sinks), "modes": {}}
        q_same = q_hidden[layer] if -n_q <= layer else None
        q_same_sinks = set(blend.sink_positions(q_same)) if q_same is not None else set()
        for mode in modes:
            x = h if mode == Normalization.NONE else _normalized(engine, refs, prompt, layer, mode, cal_path,
                                                                     len(ex.roles))
            roles: dict[str, Any] = {}
            for role, wanted in ROLE_GROUPS.items():
                idx = [i for i, r in enumerate(ex.roles) if r in wanted and i not in sinks]
                if idx:
                    roles[role] = role_stats(x[idx], ref_std)
            if sinks:
                roles["sink"] = role_stats(x[sorted(sinks)], ref_std)
            for role in ("text", "prompt") if aligned else ():
                if role not in roles:
                    continue
                # i-th text position of the VL <-> i-th position of Qwen3-4B's template; sinks of either left out
                skip = {i for i, p in enumerate(text_pos) if p in sinks or ex.roles[p] not in ROLE_GROUPS[role]}
                roles[role]["cos_zimage"] = aligned_cosine(x[text_pos], q_ref, skip | q_ref_sinks)
                if q_same is not None:
                    roles[role]["cos_same_layer"] = aligned_cosine(x[text_pos], q_same, skip | q_same_sinks)
            entry["modes"][mode] = roles
        per_layer.append(entry)

    return {
        "format": FORMAT, "prompt": prompt,
        "references": [r.path for r in refs], "reference_sha256": [r.sha256 for r in refs],
        "vl": engine.models.spec.vl, "zimage": engine.models.spec.zimage, "calibration": cal_path,
        "qwen3_layer": ZIMAGE_LAYER, "aligned": aligned, "modes": modes, "selected_layers": selected,
        "tokens": {"vl": len(ex.roles), "vl_text": len(text_pos), "qwen3": len(q_ids),
                   "image": sum(r == IMAGE for r in ex.roles)},
        "qwen3": {"layers": n_q, "sinks": sorted(q_ref_sinks), "text_rms": float(blend.rms(q_ref[q_keep])),
                  "text_rms_by_layer": [_rms_without_sinks(q_hidden[l]) for l in range(-n_q, 0)]},
        "layers": per_layer, "notes": notes,
    }


def _rms_without_sinks(x: torch.Tensor) -> float:
    sinks = set(blend.sink_positions(x))
    return float(blend.rms(x[[i for i in range(x.shape[0]) if i not in sinks]]))


def _normalized(engine, refs, prompt: str, layer: int, mode: str, calibration: str, length: int) -> torch.Tensor:
    """Every VL position at `layer` after normalisation `mode`, exactly as a recipe would condition on it."""
    cond = engine.condition(Recipe(tokens="full", layer=layer, normalization=mode, calibration=calibration),
                            prompt, refs)
    if cond.embeds.shape[0] != length:
        raise RuntimeError(f"full selection has {cond.embeds.shape[0]} rows, the extraction {length}")
    return cond.embeds.float()


# ---- after an experiment run: diagnostics.json in the output folder ----
def entry_id(ref_shas: list[str], prompt: str) -> str:
    return hashlib.sha256(json.dumps([ref_shas, prompt]).encode()).hexdigest()[:12]


def read_diagnostics(out_dir: str | Path) -> list[dict]:
    try:
        data = json.loads(read_text_file(Path(out_dir) / DIAGNOSTICS))
    except (OSError, json.JSONDecodeError):
        return []
    return [d for d in data if isinstance(d, dict) and d.get("format") == FORMAT] if isinstance(data, list) else []


def recipe_layers(recipes) -> tuple[int, ...]:
    """The layers an experiment's recipes read, and Z-Image's -2: the rows of the report's tables."""
    found = {ZIMAGE_LAYER}
    for r in recipes:
        for name in ("layer", "image_layer", "text_layer", "style_layer", "content_layer"):
            value = getattr(r, name, None)
            if isinstance(value, int):
                found.add(value)
    return tuple(sorted(found, key=lambda l: (l >= 0, -l if l < 0 else l)))


def diagnose_run(engine, out_dir: str | Path, refs: list, prompts: list[str], layers: tuple[int, ...],
                 calibration: str | None = None) -> list[dict]:
    """Diagnose each (reference, prompt) of a run (the first MAX_RUN_DIAGNOSES), skipping those on file.

    Writes diagnostics.json and a per-layer plot PNG per entry (atomically, vlbench.files).
    """
    out = Path(out_dir)
    entries = {e["id"]: e for e in read_diagnostics(out) if "id" in e}
    pairs = [([ref], prompt) for ref in refs for prompt in prompts][:MAX_RUN_DIAGNOSES]  # the report says so
    for pair_refs, prompt in pairs:
        key = entry_id([r.sha256 for r in pair_refs], prompt)
        old = entries.get(key)
        if old and old.get("vl") == engine.models.spec.vl and old.get("zimage") == engine.models.spec.zimage \
                and (out / old.get("plot", "")).is_file():
            continue
        try:
            diag = diagnose(engine, pair_refs, prompt, _fit_layers(engine, pair_refs, prompt, layers), calibration)
        except UserError as exc:
            diag = {"format": FORMAT, "prompt": prompt, "references": [r.path for r in pair_refs],
                    "reference_sha256": [r.sha256 for r in pair_refs], "error": str(exc), "layers": []}
        diag["id"] = key
        if diag.get("layers"):
            diag["plot"] = f"diagnostics-{key}.png"
            plot(diag, out / diag["plot"])
        entries[key] = diag
    write_diagnostics(out, list(entries.values()))
    return list(entries.values())


def _fit_layers(engine, refs, prompt: str, layers: tuple[int, ...]) -> tuple[int, ...]:
    """The requested layers that exist in this VL model (a run's recipes were already checked)."""
    n = engine.extraction(refs, prompt, None).num_layers
    return tuple(l for l in layers if -n <= l < n) or (ZIMAGE_LAYER,)


def write_diagnostics(out: Path, entries: list[dict]) -> Path:
    path = out / DIAGNOSTICS
    atomic_write_text(path, json.dumps(entries, indent=1) + "\n")
    return path


# ---- plots and tables ----
ROLE_COLOURS = {"image": "tab:orange", "markers": "tab:purple", "text": "tab:blue", "prompt": "tab:green",
                "sink": "tab:red"}
MODE_STYLES = {Normalization.NONE: "-", Normalization.PER_DIM: ":", Normalization.PER_DIM_SCALE: "--",
               Normalization.INSTANCE: "-.", Normalization.PER_REF_MEAN: "x-"}  # x-: solid with crosses


def plot(diag: dict, path: str | Path) -> Path:
    """Three panels against the VL layer: RMS per role, median std ratio per role, text cosine per mode."""
    from matplotlib.figure import Figure

    layers = [e["layer"] for e in diag["layers"]]
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_rms, ax_std, ax_cos = fig.subplots(1, 3)
    for role, colour in ROLE_COLOURS.items():
        for mode in diag["modes"]:
            rms = [e["modes"][mode].get(role, {}).get("rms") for e in diag["layers"]]
            std = [e["modes"][mode].get(role, {}).get("std_ratio_median") for e in diag["layers"]]
            label = role if mode == Normalization.NONE else None
            if any(v is not None for v in rms) and (mode == Normalization.NONE or role in ("image", "text")):
                ax_rms.plot(layers, _nan(rms), MODE_STYLES[mode], color=colour, label=label)
            if any(v is not None for v in std) and (mode == Normalization.NONE or role in ("image", "text")):
                ax_std.plot(layers, _nan(std), MODE_STYLES[mode], color=colour, label=label)
    ax_rms.axhline(diag["qwen3"]["text_rms"], color="black", lw=0.8, label=f"Qwen3-4B text, layer {ZIMAGE_LAYER}")
    ax_std.axhline(1.0, color="black", lw=0.8)
    for mode in diag["modes"]:
        for key, colour in (("cos_zimage", "tab:blue"), ("cos_same_layer", "tab:gray")):
            cos = [(e["modes"][mode].get("text", {}).get(key) or {}).get("mean") for e in diag["layers"]]
            if any(v is not None for v in cos):
                label = (f"vs Qwen3-4B layer {ZIMAGE_LAYER}" if key == "cos_zimage" else "vs Qwen3-4B same layer")
                ax_cos.plot(layers, _nan(cos), MODE_STYLES[mode], color=colour, label=f"{label} ({mode})")
    ax_rms.set(title="RMS by token role (sinks apart)", xlabel="VL layer", yscale="log")
    ax_std.set(title=f"median per-dim std / Qwen3-4B's (layer {ZIMAGE_LAYER})", xlabel="VL layer", yscale="log")
    ax_cos.set(title="position-aligned text cosine", xlabel="VL layer", ylim=(-1.05, 1.05))
    for ax in (ax_rms, ax_std, ax_cos):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    styles = ", ".join(f"{m}: '{MODE_STYLES[m]}'" for m in diag["modes"])
    fig.suptitle(f"{diag['prompt'][:80]!r} · {', '.join(Path(p).name for p in diag['references']) or 'no image'}"
                 f" · normalisation {styles}", fontsize=9)
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    return path


def _nan(values: list) -> list[float]:
    return [float("nan") if v is None else v for v in values]


def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _dims(pairs: list | None) -> str:
    return ", ".join(f"{d} ×{r:.3g}" for d, r in pairs or []) or "—"


def table_rows(diag: dict) -> list[dict[str, str]]:
    """One row per (selected layer, role): the cells the CLI's and the report's tables show."""
    rows = []
    by_layer = {e["layer"]: e for e in diag["layers"]}
    for layer in diag.get("selected_layers", []):
        entry = by_layer[layer]
        for role in ROLES:
            stats = entry["modes"][Normalization.NONE].get(role)
            if stats is None:
                continue
            cells = {"layer": str(layer), "role": role, "n": str(stats["n"])}
            for mode in diag["modes"]:
                s = entry["modes"][mode].get(role, {})
                cells[f"rms {mode}"] = _fmt(s.get("rms"))
                cells[f"std ratio {mode}"] = _fmt(s.get("std_ratio_median"))
                cells[f"cos {mode}"] = _fmt((s.get("cos_zimage") or {}).get("mean")) if "cos_zimage" in s else ""
            cells["dims >8×"] = f"{stats['too_large']}: {_dims(stats.get('largest'))}" if "too_large" in stats else "—"
            cells["dims <⅛"] = f"{stats['too_small']}: {_dims(stats.get('smallest'))}" if "too_small" in stats else "—"
            cells["cos same layer"] = (_fmt((stats.get("cos_same_layer") or {}).get("mean"))
                                       if "cos_same_layer" in stats else "")
            rows.append(cells)
    return rows


def print_diagnostics(diag: dict, console) -> None:
    """Narrow tables for a terminal: per mode the statistics, then the extreme dimensions (mode none)."""
    from rich.markup import escape
    from rich.table import Table

    refs = ", ".join(diag["references"]) or "no image"
    t = diag["tokens"]
    console.print(f"[bold]{escape(refs)}[/bold] · {escape(diag['prompt'])} · Qwen3-VL {t['vl']} tokens "
                  f"({t['image']} image, {t['vl_text']} text) · Qwen3-4B {t['qwen3']} tokens")
    console.print(f"std ratio: median over dims of the per-dim std over Qwen3-4B's (same prompt, text tokens, layer "
                  f"{ZIMAGE_LAYER}, sinks {diag['qwen3']['sinks']} left out); cos: position-aligned text vs "
                  f"Qwen3-4B layer {ZIMAGE_LAYER} (same: vs its same layer); sinks are a role of their own")
    by_layer = {e["layer"]: e for e in diag["layers"]}
    for mode in diag["modes"]:
        table = Table("layer", "role", "n", "RMS", "std ratio", ">8×", "<⅛", "cos", "cos same",
                      title=f"normalisation: {mode}", title_justify="left")
        for layer in diag["selected_layers"]:
            for role in ROLES:
                s = by_layer[layer]["modes"][mode].get(role)
                if s is None:
                    continue
                table.add_row(str(layer), role, str(s["n"]), _fmt(s["rms"]), _fmt(s.get("std_ratio_median")),
                              str(s.get("too_large", "—")), str(s.get("too_small", "—")),
                              _fmt((s.get("cos_zimage") or {}).get("mean")) if "cos_zimage" in s else "",
                              _fmt((s.get("cos_same_layer") or {}).get("mean")) if "cos_same_layer" in s else "")
        console.print(table)
    table = Table("layer", "role", "largest std ratio (dim ×ratio)", "smallest", title="extreme dimensions (none)",
                  title_justify="left")
    for layer in diag["selected_layers"]:
        for role in ROLES:
            s = by_layer[layer]["modes"][Normalization.NONE].get(role)
            if s is not None and "largest" in s:
                table.add_row(str(layer), role, _dims(s["largest"]), _dims(s["smallest"]))
    console.print(table)
    for note in diag.get("notes", []):
        console.print(f"[yellow]note: {escape(note)}[/yellow]")
