"""report.html (vlbench.analysis.report): rendered from a jinja2 template with autoescape (issue 24).

The content check compares what a reader sees, parsed, not bytes: tests/data/report/content.json holds the text,
links and table cells of the report of one fixture folder as the f-string renderer made it before the template
(rendered at commit e82e459's layout); the template must keep every one of them. Whitespace between and inside
text is collapsed (HTML shows a run of spaces as one), except inside <pre>.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from vlbench.analysis.report import render_report, write_folder_report, write_report
from vlbench.experiments.results import ResultsLog
from vlbench.records import RECORD_VERSION

EXPECTED = Path(__file__).parent / "data" / "report" / "content.json"
NASTY_CONFIG = "a<script>&b"
NASTY_PROMPT = "p <script>alert(1)</script> & q"


def fixture_folder(out: Path, scored: bool = True) -> tuple[list[dict], dict]:
    """A finished run folder: two configs (one named with markup), two prompts (one with markup), two seeds, one
    failed image, scores, diagnostics, attend-mix shares and run.json. Returns (rows, info) as the report reads them.
    """
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    rows, scores = [], []
    configs = ("base", NASTY_CONFIG)
    for index, name in enumerate(configs):
        for p, prompt in enumerate(("a red fox", NASTY_PROMPT)):
            for r, ref in enumerate(("ref1.png", "ref2.png")):
                for seed in (0, 1):
                    tag = f"{p}-{r}-{seed}"
                    key = f"{name}|{tag}"
                    failed = name == NASTY_CONFIG and tag == "1-1-1"
                    image = None if failed else f"images/{index}-{tag}.png"
                    rows.append({
                        "schema": RECORD_VERSION, "key": key, "experiment": "fixture & <co>", "name": name, "config_index": index,
                        "recipe": {"seed": seed, "alpha": 0.25 * index, "vl_text": "a & b"}, "prompt": prompt,
                        "seed": seed, "references": [{"path": f"/refs/{ref}", "sha256": f"{r:064d}"}],
                        "image": image, "status": "failed" if failed else "done",
                        "error": "out of memory <b>bold</b> & more" if failed else None,
                        "failure": "out_of_memory" if failed else None,
                        "timings": {"extraction": 0.01 * (seed + 1), "blend": 0.002, "generation": 0.5 + index,
                                    "model_load": 0.0},
                        "peak_memory_bytes": None if index == 0 else 3 * 2**30 + seed, "caption_tokens": 12 + index,
                        "vl_forwards": 1 if seed == 0 else 0, "source": "experiment", "image_sha256": None,
                        "started_at": 1.0, "finished_at": 2.0, "environment": {}, "metrics": {},
                        "conditioning": {"attend_mixes": [{"mix": "attend", "ratio": 0.3, "meaning": "share",
                                                           "prior_share": 0.3,
                                                           "realised_share": 0.25 + 0.01 * seed}]},
                    })
                    if not failed and scored:
                        scores.append({"key": key, "image": image, "models": {"siglip": "siglip-tiny"},
                                       "protocols": {"siglip": "2"},
                                       "metrics": {"siglip": float(0.3 * index + rng.normal(0, 0.2) + 0.1 * p)}})
    ResultsLog(out / "results.jsonl").rewrite(rows)
    if scores:
        (out / "scores.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))
    info = {"experiment": "fixture & <co>", "question": "does <alpha> & beta help?", "description": "a <b>d</b>",
            "models": {"zimage": "tiny", "vl": "tiny-vl <x>"}, "baseline": "base", "type_file": "/types/t<1>.toml",
            "type_source": "[configs]\nbase = {}  # <tag> & x\n",
            "invocations": [{"started": "s1", "finished": "f1", "done": 15, "failed": 1, "skipped": 0,
                             "interrupted": False, "vl_forwards": 4, "model_load_seconds": {"zimage": 1.5}}]}
    (out / "run.json").write_text(json.dumps(info))
    (out / "grid.png").write_bytes(b"")
    from vlbench.analysis.diagnose import FORMAT, ROLES

    (out / "diagnostics.json").write_text(json.dumps([{
        "format": FORMAT, "references": ["/refs/ref1.png"], "prompt": NASTY_PROMPT, "notes": ["note <n> & m"],
        "selected_layers": [-2], "modes": ["none"],
        "layers": [{"layer": -2, "modes": {"none": {ROLES[0]: {"n": 3, "rms": 1.25, "std_ratio_median": 0.5}}}}],
    }, {"format": FORMAT, "references": [], "prompt": "x", "error": "failed <e> & f"}]))
    read, invalid = ResultsLog(out / "results.jsonl").read()
    assert invalid == 0 and len(read) == len(rows)
    return read, info


class _Content(HTMLParser):
    """What a reader sees: text (whitespace collapsed, <pre> kept), and each link, image and table cell."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.items: list[list[str]] = []
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if tag == "pre":
            self.pre += 1
        for name, value in attrs:
            if name in ("href", "src", "alt", "class", "data-v", "style"):
                self.items.append([f"{tag}@{name}", value or ""])
        if tag in ("td", "th", "tr", "table", "h1", "h2", "h3", "h4", "p", "div", "pre", "details"):
            self.items.append([f"<{tag}>", ""])

    def handle_endtag(self, tag):
        if tag == "pre":
            self.pre -= 1

    def handle_data(self, data):
        text = data if self.pre else " ".join(data.split())
        if not text.strip():
            return
        if self.items and self.items[-1][0] == "text":
            self.items[-1][1] += ("" if self.pre else " ") + text
        else:
            self.items.append(["text", text])


def content(html: str, out: Path) -> list[list[str]]:
    parser = _Content()
    parser.feed(html)
    return [[kind, text.replace(str(out), "{out}")] for kind, text in parser.items]


def _render(tmp_path: Path) -> tuple[str, Path]:
    out = tmp_path / "run"
    rows, info = fixture_folder(out)
    write_report(out, rows, info)
    return (out / "report.html").read_text(encoding="utf-8"), out


def test_the_report_content_is_unchanged_by_the_template(tmp_path):
    html, out = _render(tmp_path)
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))
    got = content(html, out)
    assert [i for i in got if i[0] != "text"] == [i for i in expected if i[0] != "text"]  # links, cells, structure
    assert got == expected


def test_markup_in_names_prompts_and_errors_is_escaped(tmp_path):
    html, _ = _render(tmp_path)
    assert "<script>" not in html.replace("<script>\ndocument", "").split("<script>")[0]  # only the sort script
    assert html.count("<script>") == 1
    assert "a&lt;script&gt;&amp;b" in html and "p &lt;script&gt;alert(1)&lt;/script&gt; &amp; q" in html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in html and "<b>bold</b>" not in html
    assert "does &lt;alpha&gt; &amp; beta help?" in html and "# &lt;tag&gt; &amp; x" in html


def test_an_unscored_empty_folder_says_what_to_run(tmp_path):
    out = tmp_path / "empty <x>"
    out.mkdir()
    ResultsLog(out / "results.jsonl").rewrite([])
    html = (write_folder_report(out)).read_text(encoding="utf-8")
    text = " ".join(t for kind, t in content(html, out) if kind == "text")
    assert "No images yet." in text and "Not scored yet: vlbench score {out}" in text
    assert "empty &lt;x&gt;" in html


def test_render_report_is_a_complete_page(tmp_path):
    out = tmp_path / "run"
    rows, info = fixture_folder(out, scored=False)
    html = render_report(out, rows, info)
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")


if __name__ == "__main__":  # re-pin tests/data/report/content.json deliberately: python tests/test_report.py DIR
    import sys

    folder = Path(sys.argv[1])
    page, where = _render(folder)
    EXPECTED.parent.mkdir(parents=True, exist_ok=True)
    EXPECTED.write_text(json.dumps(content(page, where), ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {EXPECTED}")


def test_the_templates_ship_in_the_wheel():
    """pyproject's package-data names every template (a template left out would be missing from an install)."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["vlbench"]
    templates = sorted((root / "src" / "vlbench" / "analysis" / "templates").iterdir())
    assert templates
    for path in templates:
        rel = path.relative_to(root / "src" / "vlbench").as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), rel
