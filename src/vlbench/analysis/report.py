"""report.html for an output folder: the grid, metrics with their statistics (`vlbench.analysis.stats`: means with
design-aware intervals, paired tests against the baseline), embedding diagnostics, every image with its
recipe, and the efficiency table.

One self-contained HTML file (inline CSS, a few lines of inline script to sort tables, no network), made from
the jinja2 templates in templates/ (package data) with autoescape on: every value from a run (config names,
prompts, errors, paths, type files) is text, never markup. Images are linked by paths relative to the folder
(grid.png, metrics.png, diagnostics-*.png, images/…, references/…), so the folder must travel whole. Metric
values come from scores.jsonl (`vlbench score`), diagnostics from diagnostics.json (written after `vlbench run`).
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from vlbench.analysis import heatmap
from vlbench.errors import UserError
from vlbench.experiments.folder import RESULTS, read_info
from vlbench.experiments.results import ResultsLog, latest_by_key, reference_copy, references_key
from vlbench.files import atomic_write, atomic_write_text
from vlbench.metrics import METRICS, format_value
from vlbench.metrics.score import load_scores
from vlbench.records import vl_extractions

METRICS_PLOT = "metrics.png"
STATS_PLOT = "stats.png"
# templates/*.html.j2, autoescaped (select_autoescape: by the name's ".html.j2" suffix, and on by default)
TEMPLATES = Environment(loader=PackageLoader("vlbench.analysis", "templates"),
                        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default=True),
                        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def _secs(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f} s"


def _bytes(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**30:.2f} GiB"


def _varying(rows: list[dict]) -> list[str]:
    keys = list(rows[0]["recipe"]) if rows else []
    return [k for k in keys if k != "seed" and len({json.dumps(r["recipe"].get(k), default=str) for r in rows}) > 1]


def efficiency(rows: list[dict], info: dict) -> dict:
    """Model load, per-image extraction / blend / generation, peak memory: overall and per config."""
    done = [r for r in rows if r["status"] == "done"]
    loads: dict[str, float] = {}
    for inv in info.get("invocations", []):
        for part, secs in (inv.get("model_load_seconds") or {}).items():
            loads.setdefault(part, secs)  # per part, the first process that loaded it
    per_config: dict[str, dict] = {}
    for r in done:
        c = per_config.setdefault(r["name"], {"n": 0, "extraction": [], "blend": [], "generation": [], "peak": []})
        c["n"] += 1
        for k in ("extraction", "blend", "generation"):
            c[k].append(r["timings"].get(k, 0.0))
        if r["peak_memory_bytes"] is not None:
            c["peak"].append(r["peak_memory_bytes"])
    avg = lambda xs: mean(xs) if xs else None  # noqa: E731
    peaks = [r["peak_memory_bytes"] for r in done if r["peak_memory_bytes"] is not None]
    return {
        "model_load_seconds": loads,
        "images": len(done), "failed": len(rows) - len(done),
        "extraction": avg([r["timings"].get("extraction", 0.0) for r in done]),
        "blend": avg([r["timings"].get("blend", 0.0) for r in done]),
        "generation": avg([r["timings"].get("generation", 0.0) for r in done]),
        "peak_memory_bytes": max(peaks) if peaks else None,
        "vl_forwards": sum(r.get("vl_forwards", 0) for r in rows),
        "per_config": {name: {"images": c["n"], "extraction": avg(c["extraction"]), "blend": avg(c["blend"]),
                              "generation": avg(c["generation"]), "peak_memory_bytes": max(c["peak"]) if c["peak"] else None}
                       for name, c in per_config.items()},
    }


# ---- metrics (scores.jsonl) ----
def with_metrics(out_dir: str | Path, rows: list[dict]) -> tuple[list[dict], dict[str, set]]:
    """Rows with `metrics` filled from scores.jsonl (for the image on record), and the models each metric used."""
    scores = load_scores(out_dir)
    models: dict[str, set] = {}
    merged = []
    for r in rows:
        metrics = dict(r.get("metrics") or {})
        score = scores.get(r["key"])
        if score is not None and r["status"] == "done" and score["image"] == r["image"]:
            metrics.update(score["metrics"])
            for name, source in score["models"].items():
                models.setdefault(name, set()).add(str(source))
        merged.append(dict(r, metrics=metrics))
    return merged, models


def metric_names(rows: list[dict]) -> list[str]:
    present = {k for r in rows for k in (r.get("metrics") or {})}
    return [m for m in METRICS if m in present]


def metric_means(rows: list[dict], names: list[str]) -> dict[str, dict]:
    """config -> {"images": n scored, metric: mean over its images}, in config order."""
    out: dict[str, dict] = {}
    for r in rows:
        if not r.get("metrics"):
            continue
        c = out.setdefault(r["name"], {"images": 0, **{m: [] for m in names}})
        c["images"] += 1
        for m in names:
            if m in r["metrics"]:
                c[m].append(r["metrics"][m])
    return {name: {k: (mean(v) if v else None) if isinstance(v, list) else v for k, v in c.items()}
            for name, c in out.items()}


def plot_axes(names: list[str]) -> tuple[str, str] | None:
    """(reference similarity, prompt adherence) metrics for the plot: DINO / VQAScore when scored."""
    x = next((m for m in ("dino", "clip_i", "dinov2", "style_gram") if m in names), None)
    y = next((m for m in ("vqascore", "siglip", "clip_t") if m in names), None)
    return (x, y) if x and y else None


def plot_metrics(rows: list[dict], path: str | Path, stats: dict | None = None) -> Path | None:
    """Prompt adherence against reference similarity, one labelled point per config (its mean, with its
    interval on both axes when `stats` has one); None if the folder lacks either kind of metric."""
    from matplotlib.figure import Figure

    names = metric_names(rows)
    axes = plot_axes(names)
    if axes is None:
        return None
    x, y = axes
    means = {k: v for k, v in metric_means(rows, names).items() if v.get(x) is not None and v.get(y) is not None}
    if not means:
        return None
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    ax = fig.subplots()
    for r in rows:  # each image, faint, behind its config's mean
        m = r.get("metrics") or {}
        if x in m and y in m:
            ax.scatter(m[x], m[y], s=8, color="0.75", zorder=1)
    for name, c in means.items():
        xerr, yerr = _err(stats, x, name, c[x]), _err(stats, y, name, c[y])
        if xerr is not None or yerr is not None:
            ax.errorbar(c[x], c[y], xerr=xerr, yerr=yerr, fmt="o", ms=5, capsize=3, lw=1, zorder=2)
        else:
            ax.scatter(c[x], c[y], s=30, zorder=2)
        ax.annotate(name, (c[x], c[y]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    bars = f"; bars: {_interval_name(stats)} of each mean" if stats else ""
    ax.set(xlabel=f"reference similarity: {METRICS[x].label} (mean per config)",
           ylabel=f"prompt adherence: {METRICS[y].label} (mean per config)",
           title=f"prompt adherence vs reference similarity\n(grey: single images{bars})")
    ax.grid(alpha=0.3)
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return path


def _interval_name(stats: dict) -> str:
    """What the intervals drawn are, in a few words."""
    if stats.get("unit", "image") == "image":
        return f"{stats['confidence']:.0%} bootstrap CI over images"
    return f"{stats['confidence']:.0%} CI (prompts × references design)"


def _err(stats: dict | None, metric: str, config: str, center: float):
    """matplotlib's asymmetric error of one config's mean ([[below], [above]]), or None without an interval."""
    try:
        ci = stats["metrics"][metric]["configs"][config]["ci"]
    except (KeyError, TypeError):
        return None
    if not ci:
        return None
    return [[max(center - ci[0], 0.0)], [max(ci[1] - center, 0.0)]]


def run_stats(rows: list[dict], out: Path | None = None) -> dict | None:
    """`vlbench.analysis.stats.summarize` of a report's scored rows (None when nothing is scored); against the baseline
    the folder's experiment type names (run.json), else the first config, as `vlbench stats` does."""
    from vlbench.analysis.folders import recorded_baseline, recorded_equivalence
    from vlbench.analysis.stats import summarize

    scored = [r for r in rows if r["status"] == "done" and r.get("metrics")]
    if not scored:
        return None
    baseline = recorded_baseline([out], {r["name"] for r in scored}) if out is not None else None
    equivalence = recorded_equivalence([out]) if out is not None else None
    try:
        return summarize(scored, baseline=baseline, equivalence=equivalence)
    except UserError:
        return None


def plot_stats(stats: dict, path: str | Path) -> Path | None:
    """One panel per metric: each config's mean with its 95% interval; the baseline dashed."""
    from matplotlib.figure import Figure

    names = [m for m, b in stats["metrics"].items() if any(c["n"] for c in b["configs"].values())]
    if not names:
        return None
    configs = stats["configs"]
    cols = min(3, len(names))
    rows_n = (len(names) + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 0.35 * len(configs) * rows_n + 1.6 * rows_n), layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False)
    for ax, name in zip(axes.flat, names):
        block = stats["metrics"][name]
        ys = list(range(len(configs)))[::-1]
        for yv, config in zip(ys, configs):
            d = block["configs"][config]
            if d["mean"] is None:
                continue
            err = _err(stats, name, config, d["mean"])
            ax.errorbar(d["mean"], yv, xerr=err, fmt="o", ms=4, capsize=3, lw=1,
                        color="C1" if block["comparisons"].get(config, {}).get("significant") else "C0")
        base = block["configs"][stats["baseline"]]["mean"]
        if base is not None:
            ax.axvline(base, ls="--", lw=0.8, color="0.5")
        ax.set_yticks(ys, configs, fontsize=7)
        arrow = "→ better" if block["higher_is_better"] else "← better"
        ax.set_title(f"{block['label']} ({arrow})", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    test = "Wilcoxon" if stats.get("unit", "image") == "image" else "t test"
    fig.suptitle(f"mean per config, {_interval_name(stats)}; dashed: baseline {stats['baseline']}; orange: differs "
                 f"from it ({test}, Holm)", fontsize=9)
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return path


def stats_section(out: Path, stats: dict | None) -> Markup:
    """The Statistics section (templates/stats.html.j2) for `stats` (vlbench.analysis.stats.summarize's dict)."""
    if stats is None:
        return Markup("")
    from vlbench.analysis.stats import design_line, method_line, plan_lines, table_rows

    tables = [{"label": block["label"], "name": name, "design": design_line(stats, name), "note": block.get("note"),
               "arrow": "higher is better" if block["higher_is_better"] else "lower is better",
               "rows": table_rows(stats, name)} for name, block in stats["metrics"].items()]
    return Markup(TEMPLATES.get_template("stats.html.j2").render(
        stats=stats, method=method_line(stats), tables=tables,
        stats_plot=STATS_PLOT if (out / STATS_PLOT).exists() else None,
        plan="\n".join(plan_lines(stats)) if stats.get("plan") else None))


def _num_cell(value) -> dict:
    """A sortable number cell: its raw value (data-v) and its text."""
    return {"raw": "" if value is None else repr(float(value)), "text": format_value(value)}


def _metrics_view(out: Path, rows: list[dict], models: dict[str, set]) -> dict | None:
    """The Metrics section's content (None: not scored yet)."""
    names = metric_names(rows)
    if not names:
        return None
    stats = run_stats(rows, out)
    return {
        "legend": [{"label": METRICS[m].label, "description": METRICS[m].description,
                    "models": ", ".join(sorted(models.get(m, {"?"})))} for m in names],
        "plot": METRICS_PLOT if (out / METRICS_PLOT).exists() and plot_axes(names) else None,
        "stats_section": stats_section(out, stats),
        "means": [{"name": name, "images": c["images"], "cells": [_num_cell(c.get(m)) for m in names]}
                  for name, c in metric_means(rows, names).items()],
        "images": [{"name": r["name"], "references": _reference_names(r), "prompt": r["prompt"], "seed": r["seed"],
                    "cells": [_num_cell(r["metrics"].get(m)) for m in names], "image": r["image"],
                    "image_name": Path(r["image"]).name} for r in rows if r.get("metrics")],
    }


# ---- embedding diagnostics (diagnostics.json) ----
def _diagnostics_view(out: Path, rows: list[dict]) -> dict | None:
    if not (out / "diagnostics.json").is_file():  # before importing diagnose (it imports torch)
        return None
    from vlbench.analysis.diagnose import MAX_RUN_DIAGNOSES, ZIMAGE_LAYER, read_diagnostics, table_rows

    entries = read_diagnostics(out)
    if not entries:
        return None
    pairs = {(references_key(r), r["prompt"]) for r in rows}
    first = len(entries) if len(pairs) > len(entries) and len(entries) >= MAX_RUN_DIAGNOSES else None
    views = []
    for diag in entries:
        views.append({
            "references": ", ".join(Path(p).name for p in diag.get("references", [])) or "no image",
            "prompt": diag.get("prompt", ""), "error": diag.get("error"), "notes": diag.get("notes", []),
            "plot": diag["plot"] if diag.get("plot") and (out / diag["plot"]).exists() else None,
            "table": None if diag.get("error") else table_rows(diag)})
    return {"layer": ZIMAGE_LAYER, "first": first, "pairs": len(pairs), "entries": views}


def _efficiency_view(eff: dict) -> dict:
    return {
        "loads": [(part, _secs(secs)) for part, secs in eff["model_load_seconds"].items()],
        "overall": [("extraction per image (mean; cache hits included)", _secs(eff["extraction"])),
                    ("blend per image (mean)", _secs(eff["blend"])),
                    ("generation per image (mean)", _secs(eff["generation"])),
                    ("peak GPU memory", _bytes(eff["peak_memory_bytes"])),
                    ("VL forwards", eff["vl_forwards"]),
                    ("images done / failed", f"{eff['images']} / {eff['failed']}")],
        "per_config": [{"name": name, "images": c["images"], "extraction": _secs(c["extraction"]),
                        "blend": _secs(c["blend"]), "generation": _secs(c["generation"]),
                        "peak": _bytes(c["peak_memory_bytes"])} for name, c in eff["per_config"].items()],
    }


def _card(out: Path, r: dict, vary: list[str], names: list[str]) -> dict:
    """One image's card: the image (or its error), what varies, its timings and metrics, its heat maps, its recipe."""
    failed = r["status"] != "done"
    t = r.get("timings") or {}
    metrics = r.get("metrics") or {}
    return {
        "failed": failed, "image": r.get("image"), "name": r["name"], "seed": r["seed"],
        "references": _reference_names(r), "prompt": r["prompt"],
        "varying": ", ".join(f"{k}={r['recipe'].get(k)}" for k in vary), "error": r.get("error"),
        "caption_tokens": r.get("caption_tokens"), "generation": _secs(t.get("generation")),
        "extraction": _secs(t.get("extraction")),
        "metrics": " · ".join(f"{METRICS[m].label} {format_value(metrics[m])}" for m in names if m in metrics),
        "heatmaps": [{"path": hm, "which": f" (reference {i + 1})" if i else ""}
                     for i, hm in enumerate(heatmap_paths(r)) if (out / hm).exists()],
        "recipe": json.dumps(r["recipe"], indent=1),
    }


INVOCATION_COLUMNS = ("started", "finished", "done", "failed", "skipped", "interrupted", "vl_forwards")


def render_report(out_dir: str | Path, rows: list[dict], info: dict) -> str:
    """report.html's text: templates/report.html.j2 with the folder's content (every value escaped)."""
    out = Path(out_dir)
    rows = sorted(rows, key=lambda r: (r.get("config_index", 0), references_key(r), r["prompt"], r["seed"]))
    rows, metric_models = with_metrics(out, rows)
    names = metric_names(rows)
    models = info.get("models", {})
    vary = _varying(rows)
    return TEMPLATES.get_template("report.html.j2").render(
        out=str(out), info=info, title=info.get("experiment") or "vlbench run", models=models,
        tiny="tiny" in json.dumps(models), grid=(out / "grid.png").exists(),
        metrics=_metrics_view(out, rows, metric_models), diagnostics=_diagnostics_view(out, rows),
        shares=_shares_view(out, rows), efficiency=_efficiency_view(efficiency(rows, info)),
        cards=[_card(out, r, vary, names) for r in rows],
        invocations=[[str(inv.get(k, "—")) for k in INVOCATION_COLUMNS] for inv in info.get("invocations", [])],
    )


def write_report(out_dir: str | Path, rows: list[dict], info: dict) -> Path:
    out = Path(out_dir)
    scored, _ = with_metrics(out, rows)
    if metric_names(scored):
        stats = run_stats(scored, out)
        plot_metrics(scored, out / METRICS_PLOT, stats)
        if stats is not None:
            plot_stats(stats, out / STATS_PLOT)
    write_heatmaps(out, rows)
    plot_shares(rows, out / SHARES_PLOT)  # issue 23
    path = out / "report.html"
    atomic_write_text(path, render_report(out, rows, info))
    return path


def write_folder_report(out_dir: str | Path) -> Path:
    """report.html from the folder as it stands: each job key's latest row in results.jsonl, and run.json. Whoever
    finishes a folder calls it (`vlbench run`, `vlbench score`, the search, the worker's batch export): the
    experiments package writes the folder and never the report."""
    out = Path(out_dir)
    rows, _ = ResultsLog(out / RESULTS).read()
    return write_report(out, list(latest_by_key(rows).values()), read_info(out) or {})


# ---- issue 17: heat maps of the VL text's attention to the references' image tokens ----
HEATMAPS = "heatmaps"


def heatmap_paths(row: dict) -> list[str]:
    """Where a done row's heat maps go, relative to the folder (one per image whose attention the run read)."""
    cond = row.get("conditioning") or {}
    n = sum(len((vl.get("image_attention") or {}).get("images", [])) for _, vl in vl_extractions(cond))
    if row.get("status") != "done" or not n or not row.get("image"):
        return []
    stem = Path(row["image"]).stem
    return [f"{HEATMAPS}/{stem}.png" if n == 1 else f"{HEATMAPS}/{stem}-{i + 1}.png" for i in range(n)]


def write_heatmaps(out: Path, rows: list[dict]) -> int:
    """Each done row's heat maps (vlbench.analysis.heatmap over the folder's copy of each reference), unless present."""
    written = 0
    for row in rows:
        paths = heatmap_paths(row)
        if not paths or all((out / p).exists() for p in paths):
            continue
        refs = []
        for ref in row.get("references", []):
            copy = out / reference_copy(ref["path"], ref.get("sha256") or "")
            refs.append(copy if copy.exists() else Path(ref["path"]))
        if not all(p.exists() for p in refs):
            continue  # the folder travelled without its references: no heat map, the rest of the report stands
        for rel, img in zip(paths, heatmap.from_conditioning(row["conditioning"], refs, row.get("recipe"))):
            (out / HEATMAPS).mkdir(exist_ok=True)
            atomic_write(out / rel, lambda tmp, img=img: img.save(tmp, format="PNG"))
            written += 1
    return written


def _reference_names(row: dict) -> str:
    return " + ".join(Path(r["path"]).name for r in row.get("references", [])) or "no reference"


# ---- issue 23: an attend ratio is a share; the share the DiT really gave ----
SHARES_PLOT = "shares.png"


def share_points(rows: list[dict]) -> list[dict]:
    """Per config and attend mix (numeric ratios): the ratio, the prior share and the mean realised share over the
    images that measured it (`--measure-share`; None where none did)."""
    groups: dict[tuple[str, str], dict] = {}
    for row in rows:
        for m in (row.get("conditioning") or {}).get("attend_mixes", []):
            g = groups.setdefault((str(row.get("name")), m["mix"]), {
                "config": str(row.get("name")), "mix": m["mix"], "ratio": m["ratio"], "meaning": m["meaning"],
                "prior": [], "realised": []})
            g["prior"].append(m["prior_share"])
            if m.get("realised_share") is not None:
                g["realised"].append(m["realised_share"])
    out = []
    for g in groups.values():
        out.append({**g, "prior": sum(g["prior"]) / len(g["prior"]), "images": len(g["realised"]),
                    "realised": sum(g["realised"]) / len(g["realised"]) if g["realised"] else None})
    return out


def plot_shares(rows: list[dict], path: str | Path) -> Path | None:
    """The prior share (the ratio, for a share) against the realised share, one point per config and mix; None
    when no image measured it."""
    points = [p for p in share_points(rows) if p["realised"] is not None]
    if not points:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5.5), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, zorder=1)
    for p in points:
        ax.scatter(p["prior"], p["realised"], s=30, zorder=2)
        ax.annotate(f"{p['config']} ({p['mix']})", (p["prior"], p["realised"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="prior share of the other source (equal logits; the ratio, as a share)",
           ylabel="realised share (DiT attention of the image tokens, mean over images)",
           title="attend mixes: ratio vs realised share\n(grey: realised = prior)")
    ax.grid(alpha=0.3)
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return path


def _shares_view(out: Path, rows: list[dict]) -> dict | None:
    points = share_points(rows)
    if not points:
        return None
    return {
        "plot": SHARES_PLOT if (out / SHARES_PLOT).exists() and any(p["realised"] is not None for p in points)
        else None,
        "points": [{"config": p["config"], "mix": p["mix"],
                    "ratio": p["ratio"] if isinstance(p["ratio"], str) else f"{p['ratio']:g} ({p['meaning']})",
                    "prior": f"{p['prior']:.3f}",
                    "realised": "—" if p["realised"] is None else f"{p['realised']:.3f}",
                    "images": p["images"]} for p in points],
    }
