"""report.html for an output folder: the grid, metrics with their statistics (`vlbench.analysis.stats`: means with
design-aware intervals, paired tests against the baseline), embedding diagnostics, every image with its
recipe, and the efficiency table.

One self-contained HTML file (inline CSS, a few lines of inline script to sort tables, no network);
images are linked by paths relative to the folder (grid.png, metrics.png, diagnostics-*.png,
images/…, references/…), so the folder must travel whole. Metric values come from scores.jsonl
(`vlbench score`), diagnostics from diagnostics.json (written after `vlbench run`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from statistics import mean
from typing import Any

from vlbench.experiments.folder import RESULTS, read_info
from vlbench.experiments.results import ResultsLog, latest_by_key, references_key
from vlbench.files import atomic_write, atomic_write_text
from vlbench.records import vl_extractions

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { margin-bottom: 0.2em; } .q { color: #444; font-style: italic; }
table { border-collapse: collapse; margin: 0.8em 0; } th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; } .card { border: 1px solid #ddd; padding: 8px; width: 280px; }
.card img { max-width: 100%; image-rendering: pixelated; } .failed { background: #fbeaea; color: #a11; }
pre { font-size: 11px; white-space: pre-wrap; background: #f7f7f7; padding: 6px; }
.grid img { max-width: 100%; } .dim { color: #777; }
table.sortable th { cursor: pointer; user-select: none; } table.sortable th[data-dir=asc]::after { content: " ▲"; }
table.sortable th[data-dir=desc]::after { content: " ▼"; } .plot img { max-width: 100%; }
"""

# Click a header to sort by it; numbers compare as numbers (cells carry their raw value in data-v),
# empty cells go last.
SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], i = th.cellIndex;
    var dir = th.dataset.dir === 'desc' ? 'asc' : 'desc';
    table.querySelectorAll('th').forEach(function (h) { delete h.dataset.dir; });
    th.dataset.dir = dir;
    function key(row) { var c = row.cells[i], v = c.dataset.v !== undefined ? c.dataset.v : c.textContent;
      var n = parseFloat(v); return isNaN(n) ? [v === '' || v === '—' ? 2 : 1, v] : [0, n]; }
    Array.from(body.rows).map(function (r) { return [key(r), r]; }).sort(function (a, b) {
      if (a[0][0] !== b[0][0]) return a[0][0] - b[0][0];
      var c = a[0][0] === 0 ? a[0][1] - b[0][1] : String(a[0][1]).localeCompare(b[0][1]);
      return dir === 'asc' ? c : -c;
    }).forEach(function (p) { body.appendChild(p[1]); });
  });
});
"""
METRICS_PLOT = "metrics.png"
STATS_PLOT = "stats.png"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


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
    from vlbench.metrics.score import load_scores

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
    from vlbench.metrics import METRICS

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

    from vlbench.metrics import METRICS

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
    from vlbench.errors import UserError
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


def _stats_section(out: Path, stats: dict | None) -> list[str]:
    from vlbench.analysis.stats import table_rows

    if stats is None:
        return []
    from vlbench.analysis.stats import design_line, method_line

    if stats.get("unit", "image") == "image":
        what = ("Per config: mean ± standard deviation and an interval over images, each image an independent unit. "
                "Against the baseline <b>{b}</b>: the paired difference on shared (prompt, reference, seed) slots "
                "with its interval, a two-sided Wilcoxon signed-rank test and the win rate (ties count half).")
    else:
        what = ("Per config: mean ± standard deviation (over images) and an interval that treats prompts and "
                "references as random, crossed factors with seeds inside each (prompt, reference) cell. Against "
                "the baseline <b>{b}</b>: the paired difference (per image slot, then per cell) with its interval, "
                "its degrees of freedom, a t test, the win rate over cells (ties count half) and, in the JSON, the "
                "smallest difference the run could detect (mde).")
    parts = [f"<h3>Statistics</h3><p class='dim'>{what.format(b=_e(stats['baseline']))} "
             f"{_e(method_line(stats))}. <code>vlbench stats DIR --json</code> gives every number "
             "(docs/stats.md).</p>"]
    for note in stats["notes"]:
        parts.append(f"<p class='failed'>{_e(note)}</p>")
    if (out / STATS_PLOT).exists():
        parts.append(f"<p class='plot'><a href='{STATS_PLOT}'><img src='{STATS_PLOT}' "
                     "alt='means with 95% intervals per metric'></a></p>")
    for name, block in stats["metrics"].items():
        rows = table_rows(stats, name)
        arrow = "higher is better" if block["higher_is_better"] else "lower is better"
        parts.append(f"<h4>{_e(block['label'])} <span class='dim'>({_e(name)}; {arrow})</span></h4>"
                     f"<p class='dim'>{_e(design_line(stats, name))}</p>"
                     + (f"<p class='failed'>{_e(block['note'])}</p>" if block.get("note") else "")
                     + "<table><thead><tr>" + "".join(f"<th>{_e(k)}</th>" for k in rows[0]) + "</tr></thead><tbody>")
        for cells in rows:
            cls = {"better": " style='background:#eaf6ea'",
                   "worse": " style='background:#fbeaea'"}.get(cells["verdict"], "")
            parts.append(f"<tr{cls}>" + "".join(f"<td{'' if i == 0 else ' class=num'}>{_e(v)}</td>"
                                               for i, v in enumerate(cells.values())) + "</tr>")
        parts.append("</tbody></table>")
    from vlbench.analysis.stats import plan_lines

    if stats.get("plan"):
        parts.append("<pre>" + _e("\n".join(plan_lines(stats))) + "</pre>")
    return parts


def _num_cell(value) -> str:
    from vlbench.metrics import format_value

    raw = "" if value is None else repr(float(value))
    return f"<td class='num' data-v='{raw}'>{format_value(value)}</td>"


def _metrics_section(out: Path, rows: list[dict], models: dict[str, set]) -> list[str]:
    from vlbench.metrics import METRICS

    names = metric_names(rows)
    stats = run_stats(rows, out) if names else None
    if not names:
        return ["<h2>Metrics</h2><p class='dim'>Not scored yet: <code>vlbench score "
                f"{_e(out)}</code> (or <code>vlbench run … --metrics</code>).</p>"]
    parts = ["<h2>Metrics</h2><p class='dim'>Click a column heading to sort. "]
    parts.append(" · ".join(f"<b>{_e(METRICS[m].label)}</b>: {_e(METRICS[m].description)} "
                            f"[{_e(', '.join(sorted(models.get(m, {'?'}))))}]" for m in names) + "</p>")
    if (out / METRICS_PLOT).exists() and plot_axes(names):
        parts.append(f"<p class='plot'><a href='{METRICS_PLOT}'><img src='{METRICS_PLOT}' "
                     "alt='prompt adherence vs reference similarity'></a></p>")
    parts += _stats_section(out, stats)
    head = "".join(f"<th>{_e(METRICS[m].label)}</th>" for m in names)
    parts.append(f"<h3>Per config (mean)</h3><table class='sortable'><thead><tr><th>config</th><th>images</th>{head}"
                 "</tr></thead><tbody>")
    for name, c in metric_means(rows, names).items():
        parts.append(f"<tr><td>{_e(name)}</td><td class='num'>{c['images']}</td>"
                     + "".join(_num_cell(c.get(m)) for m in names) + "</tr>")
    parts.append(f"</tbody></table><details><summary>Per image</summary><table class='sortable'><thead><tr>"
                 f"<th>config</th><th>reference</th><th>prompt</th><th>seed</th>{head}<th>image</th></tr></thead><tbody>")
    for r in rows:
        if not r.get("metrics"):
            continue
        parts.append(f"<tr><td>{_e(r['name'])}</td><td>{_e(_reference_names(r))}</td><td>{_e(r['prompt'])}</td>"
                     f"<td class='num'>{r['seed']}</td>" + "".join(_num_cell(r["metrics"].get(m)) for m in names)
                     + f"<td><a href='{_e(r['image'])}'>{_e(Path(r['image']).name)}</a></td></tr>")
    parts.append("</tbody></table></details>")
    return parts


# ---- embedding diagnostics (diagnostics.json) ----
def _diagnostics_section(out: Path, rows: list[dict]) -> list[str]:
    if not (out / "diagnostics.json").is_file():  # before importing diagnose (it imports torch)
        return []
    from vlbench.analysis.diagnose import MAX_RUN_DIAGNOSES, ZIMAGE_LAYER, read_diagnostics, table_rows

    entries = read_diagnostics(out)
    if not entries:
        return []
    parts = ["<h2>Embedding diagnostics</h2><p class='dim'>Qwen3-VL's hidden states per layer and token role, "
             f"against Qwen3-4B's encoding of the same prompt at layer {ZIMAGE_LAYER} (what Z-Image's DiT was "
             "trained on). RMS over the role's rows (attention sinks apart); std ratio: the median over dimensions "
             "of the role's per-dimension std over Qwen3-4B's, with the dimensions beyond 8× either way (count: "
             f"most extreme, as dim ×ratio); cos: position-aligned text tokens vs Qwen3-4B layer {ZIMAGE_LAYER} "
             "(cos same layer: vs Qwen3-4B's same layer). Columns per normalisation mode.</p>"]
    pairs = {(references_key(r), r["prompt"]) for r in rows}
    if len(pairs) > len(entries) and len(entries) >= MAX_RUN_DIAGNOSES:
        parts.append(f"<p class='dim'>Diagnosed the first {len(entries)} of {len(pairs)} (reference, prompt) "
                     "pairs; <code>vlbench diagnose</code> does any other.</p>")
    for diag in entries:
        refs = ", ".join(Path(p).name for p in diag.get("references", [])) or "no image"
        parts.append(f"<h3>{_e(refs)} · {_e(diag.get('prompt', ''))}</h3>")
        if diag.get("error"):
            parts.append(f"<p class='failed'>{_e(diag['error'])}</p>")
            continue
        for note in diag.get("notes", []):
            parts.append(f"<p class='dim'>note: {_e(note)}</p>")
        if diag.get("plot") and (out / diag["plot"]).exists():
            parts.append(f"<p class='plot'><a href='{_e(diag['plot'])}'><img src='{_e(diag['plot'])}' "
                         "alt='per-layer diagnostics'></a></p>")
        table = table_rows(diag)
        if table:
            parts.append("<table class='sortable'><thead><tr>" + "".join(f"<th>{_e(k)}</th>" for k in table[0])
                         + "</tr></thead><tbody>")
            for cells in table:
                parts.append("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in cells.values()) + "</tr>")
            parts.append("</tbody></table>")
    return parts


def render_report(out_dir: str | Path, rows: list[dict], info: dict) -> str:
    out = Path(out_dir)
    rows = sorted(rows, key=lambda r: (r.get("config_index", 0), references_key(r), r["prompt"], r["seed"]))
    rows, metric_models = with_metrics(out, rows)
    names = metric_names(rows)
    title = info.get("experiment") or "vlbench run"
    eff = efficiency(rows, info)
    vary = _varying(rows)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)} — vlbench</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>{_e(title)}</h1>"]
    if info.get("question"):
        parts.append(f"<p class='q'>{_e(info['question'])}</p>")
    if info.get("description"):
        parts.append(f"<p>{_e(info['description'])}</p>")
    models = info.get("models", {})
    if models:
        parts.append("<p class='dim'>" + " · ".join(f"{_e(k)}: {_e(v)}" for k, v in models.items()) + "</p>")
    if "tiny" in json.dumps(models):
        parts.append("<p class='failed'>Built-in tiny RANDOM-WEIGHT models: the images are noise.</p>")

    parts.append("<h2>Grid</h2>")
    if (out / "grid.png").exists():
        parts.append("<p class='grid'><a href='grid.png'><img src='grid.png' alt='comparison grid'></a></p>")
    else:
        parts.append("<p class='dim'>No images yet.</p>")

    parts += _metrics_section(out, rows, metric_models)
    parts += _diagnostics_section(out, rows)
    parts += _shares_section(out, rows)  # issue 23

    parts.append("<h2>Efficiency</h2><table><tr><th>what</th><th>value</th></tr>")
    for part, secs in eff["model_load_seconds"].items():
        parts.append(f"<tr><td>model load: {_e(part)}</td><td class='num'>{_secs(secs)}</td></tr>")
    for label, key in (("extraction per image (mean; cache hits included)", "extraction"),
                       ("blend per image (mean)", "blend"), ("generation per image (mean)", "generation")):
        parts.append(f"<tr><td>{label}</td><td class='num'>{_secs(eff[key])}</td></tr>")
    parts.append(f"<tr><td>peak GPU memory</td><td class='num'>{_bytes(eff['peak_memory_bytes'])}</td></tr>")
    parts.append(f"<tr><td>VL forwards</td><td class='num'>{eff['vl_forwards']}</td></tr>")
    parts.append(f"<tr><td>images done / failed</td><td class='num'>{eff['images']} / {eff['failed']}</td></tr>")
    parts.append("</table><table><tr><th>config</th><th>images</th><th>extraction</th><th>blend</th>"
                 "<th>generation</th><th>peak GPU memory</th></tr>")
    for name, c in eff["per_config"].items():
        parts.append(f"<tr><td>{_e(name)}</td><td class='num'>{c['images']}</td><td class='num'>{_secs(c['extraction'])}</td>"
                     f"<td class='num'>{_secs(c['blend'])}</td><td class='num'>{_secs(c['generation'])}</td>"
                     f"<td class='num'>{_bytes(c['peak_memory_bytes'])}</td></tr>")
    parts.append("</table>")

    parts.append(f"<h2>Images ({len(rows)})</h2><div class='cards'>")
    for r in rows:
        failed = r["status"] != "done"
        key_fields = ", ".join(f"{k}={r['recipe'].get(k)}" for k in vary)
        parts.append(f"<div class='card{' failed' if failed else ''}'>")
        if not failed:
            parts.append(f"<a href='{_e(r['image'])}'><img src='{_e(r['image'])}' alt='{_e(r['name'])}'></a>")
        parts.append(f"<div><b>{_e(r['name'])}</b> · seed {r['seed']}</div>")
        parts.append(f"<div class='dim'>{_e(_reference_names(r))} · {_e(r['prompt'])}</div>")
        if key_fields:
            parts.append(f"<div>{_e(key_fields)}</div>")
        if failed:
            parts.append(f"<div>failed: {_e(r['error'])}</div>")
        else:
            t = r["timings"]
            parts.append(f"<div class='dim'>{r['caption_tokens']} caption tokens · generation "
                         f"{_secs(t.get('generation'))} · extraction {_secs(t.get('extraction'))}</div>")
            if r.get("metrics"):
                from vlbench.metrics import METRICS, format_value

                parts.append("<div>" + " · ".join(f"{_e(METRICS[m].label)} {format_value(r['metrics'][m])}"
                                                  for m in names if m in r["metrics"]) + "</div>")
        for i, hm in enumerate(heatmap_paths(r)):
            if (out / hm).exists():
                parts.append(f"<div class='dim'>VL text → image attention{f' (reference {i + 1})' if i else ''}"
                             f"</div><a href='{_e(hm)}'><img src='{_e(hm)}' alt='attention heat map'></a>")
        parts.append(f"<details><summary>recipe</summary><pre>{_e(json.dumps(r['recipe'], indent=1))}</pre></details>")
        parts.append("</div>")
    parts.append("</div>")
    invocations = info.get("invocations", [])
    if invocations:
        parts.append("<h2>Runs</h2><table><tr><th>started</th><th>finished</th><th>done</th><th>failed</th>"
                     "<th>skipped</th><th>interrupted</th><th>VL forwards</th></tr>")
        for inv in invocations:
            parts.append("<tr>" + "".join(f"<td>{_e(inv.get(k, '—'))}</td>" for k in
                                          ("started", "finished", "done", "failed", "skipped", "interrupted",
                                           "vl_forwards")) + "</tr>")
        parts.append("</table>")
    if info.get("type_source"):
        parts.append(f"<h2>Type file</h2><p class='dim'>{_e(info.get('type_file', ''))}</p>"
                     f"<pre>{_e(info['type_source'])}</pre>")
    parts.append(f"<script>{SORT_JS}</script></body></html>\n")
    return "".join(parts)


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


# ---- issue 17: heat maps of the VL text's attention to the references' image tokens ----
def write_folder_report(out_dir: str | Path) -> Path:
    """report.html from the folder as it stands: each job key's latest row in results.jsonl, and run.json. Whoever
    finishes a folder calls it (`vlbench run`, `vlbench score`, the search, the worker's batch export): the
    experiments package writes the folder and never the report."""
    out = Path(out_dir)
    rows, _ = ResultsLog(out / RESULTS).read()
    return write_report(out, list(latest_by_key(rows).values()), read_info(out) or {})


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
    from vlbench.analysis import heatmap
    from vlbench.experiments.results import reference_copy

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


def _shares_section(out: Path, rows: list[dict]) -> list[str]:
    points = share_points(rows)
    if not points:
        return []
    parts = ["<h2>Attend mixes: the ratio as a share</h2>",
             "<p class='dim'>prior: the other source's share of the caption's attention when every logit is equal "
             "(for a share, the ratio itself); realised: the share the DiT's image tokens gave it, measured with "
             "--measure-share (docs/intra_vl_blending.md).</p>"]
    if (out / SHARES_PLOT).exists() and any(p["realised"] is not None for p in points):
        parts.append(f"<p class='plot'><a href='{SHARES_PLOT}'><img src='{SHARES_PLOT}' "
                     "alt='ratio vs realised share'></a></p>")
    parts.append("<table><tr><th>config</th><th>mix</th><th>ratio</th><th>prior share</th>"
                 "<th>realised share</th><th>images measured</th></tr>")
    for p in points:
        ratio = p["ratio"] if isinstance(p["ratio"], str) else f"{p['ratio']:g} ({p['meaning']})"
        realised = "—" if p["realised"] is None else f"{p['realised']:.3f}"
        parts.append(f"<tr><td>{_e(p['config'])}</td><td>{_e(p['mix'])}</td><td>{_e(ratio)}</td>"
                     f"<td>{p['prior']:.3f}</td><td>{realised}</td><td>{p['images']}</td></tr>")
    parts.append("</table>")
    return parts
