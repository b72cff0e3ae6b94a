"""report.html for an output folder: the grid, every image with its recipe, and the efficiency table.

One self-contained HTML file (inline CSS, no scripts, no network); images are linked by paths
relative to the folder (grid.png, images/…, references/…), so the folder must travel whole.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from statistics import mean
from typing import Any

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { margin-bottom: 0.2em; } .q { color: #444; font-style: italic; }
table { border-collapse: collapse; margin: 0.8em 0; } th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; } .card { border: 1px solid #ddd; padding: 8px; width: 280px; }
.card img { max-width: 100%; image-rendering: pixelated; } .failed { background: #fbeaea; color: #a11; }
pre { font-size: 11px; white-space: pre-wrap; background: #f7f7f7; padding: 6px; }
.grid img { max-width: 100%; } .dim { color: #777; }
"""


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
        if r["peak_vram_bytes"] is not None:
            c["peak"].append(r["peak_vram_bytes"])
    avg = lambda xs: mean(xs) if xs else None  # noqa: E731
    peaks = [r["peak_vram_bytes"] for r in done if r["peak_vram_bytes"] is not None]
    return {
        "model_load_seconds": loads,
        "images": len(done), "failed": len(rows) - len(done),
        "extraction": avg([r["timings"].get("extraction", 0.0) for r in done]),
        "blend": avg([r["timings"].get("blend", 0.0) for r in done]),
        "generation": avg([r["timings"].get("generation", 0.0) for r in done]),
        "peak_vram_bytes": max(peaks) if peaks else None,
        "vl_forwards": sum(r.get("vl_forwards", 0) for r in rows),
        "per_config": {name: {"images": c["n"], "extraction": avg(c["extraction"]), "blend": avg(c["blend"]),
                              "generation": avg(c["generation"]), "peak_vram_bytes": max(c["peak"]) if c["peak"] else None}
                       for name, c in per_config.items()},
    }


def render_report(out_dir: str | Path, rows: list[dict], info: dict) -> str:
    out = Path(out_dir)
    rows = sorted(rows, key=lambda r: (r.get("config_index", 0), r["reference"], r["prompt"], r["seed"]))
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

    parts.append("<h2>Efficiency</h2><table><tr><th>what</th><th>value</th></tr>")
    for part, secs in eff["model_load_seconds"].items():
        parts.append(f"<tr><td>model load: {_e(part)}</td><td class='num'>{_secs(secs)}</td></tr>")
    for label, key in (("extraction per image (mean; cache hits included)", "extraction"),
                       ("blend per image (mean)", "blend"), ("generation per image (mean)", "generation")):
        parts.append(f"<tr><td>{label}</td><td class='num'>{_secs(eff[key])}</td></tr>")
    parts.append(f"<tr><td>peak GPU memory</td><td class='num'>{_bytes(eff['peak_vram_bytes'])}</td></tr>")
    parts.append(f"<tr><td>VL forwards</td><td class='num'>{eff['vl_forwards']}</td></tr>")
    parts.append(f"<tr><td>images done / failed</td><td class='num'>{eff['images']} / {eff['failed']}</td></tr>")
    parts.append("</table><table><tr><th>config</th><th>images</th><th>extraction</th><th>blend</th>"
                 "<th>generation</th><th>peak GPU memory</th></tr>")
    for name, c in eff["per_config"].items():
        parts.append(f"<tr><td>{_e(name)}</td><td class='num'>{c['images']}</td><td class='num'>{_secs(c['extraction'])}</td>"
                     f"<td class='num'>{_secs(c['blend'])}</td><td class='num'>{_secs(c['generation'])}</td>"
                     f"<td class='num'>{_bytes(c['peak_vram_bytes'])}</td></tr>")
    parts.append("</table>")

    parts.append(f"<h2>Images ({len(rows)})</h2><div class='cards'>")
    for r in rows:
        failed = r["status"] != "done"
        key_fields = ", ".join(f"{k}={r['recipe'].get(k)}" for k in vary)
        parts.append(f"<div class='card{' failed' if failed else ''}'>")
        if not failed:
            parts.append(f"<a href='{_e(r['image'])}'><img src='{_e(r['image'])}' alt='{_e(r['name'])}'></a>")
        parts.append(f"<div><b>{_e(r['name'])}</b> · seed {r['seed']}</div>")
        parts.append(f"<div class='dim'>{_e(Path(r['reference']).name)} · {_e(r['prompt'])}</div>")
        if key_fields:
            parts.append(f"<div>{_e(key_fields)}</div>")
        if failed:
            parts.append(f"<div>failed: {_e(r['error'])}</div>")
        else:
            t = r["timings"]
            parts.append(f"<div class='dim'>{r['caption_tokens']} caption tokens · generation "
                         f"{_secs(t.get('generation'))} · extraction {_secs(t.get('extraction'))}</div>")
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
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(out_dir: str | Path, rows: list[dict], info: dict) -> Path:
    out = Path(out_dir)
    path = out / "report.html"
    tmp = out / f".report.html.{os.getpid()}.tmp"
    tmp.write_text(render_report(out, rows, info), encoding="utf-8")
    os.replace(tmp, path)
    return path
