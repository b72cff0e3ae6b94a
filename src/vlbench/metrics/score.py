"""Score a run folder's images: a separate pass over results.jsonl, batched and resumable.

Scores go to `scores.jsonl` beside results.jsonl, one line per scored image (job key, image,
values, the model each value came from, the protocol version of each metric), appended and fsynced
after each batch; results.jsonl is never touched. A value recorded under an older protocol of its
metric (e.g. SigLIP probabilities before `siglip` became the logit) is never shown: it is recomputed. A killed pass loses at most the batch in flight; re-running skips every image
already scored with the same model, and a torn last line is dropped. Values also go into the run
store (Store.set_metrics) for the rows the runner recorded, found by their output path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from vlbench.errors import UserError
from vlbench.experiments.results import JsonlLog, ResultsLog, first_reference, latest_by_key, reference_copy
from vlbench.metrics import METRICS, check_available
from vlbench.pngs import png_ok

SCORES = "scores.jsonl"


# ---- the sidecar ----
class ScoresLog(JsonlLog):
    """scores.jsonl of one output folder: append-only, tolerant of a torn last line."""

    def valid(self, entry) -> bool:
        return _valid(entry)

    def append(self, entries: list[dict]) -> None:
        self.append_rows(entries)


def _valid(entry: Any) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("image"), str)
            and isinstance(entry.get("metrics"), dict) and isinstance(entry.get("models"), dict)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry["metrics"].values()))


def _protocol(entry: dict, name: str) -> str:
    return str((entry.get("protocols") or {}).get(name, "1"))


def merge(entries: list[dict], scores: dict[str, dict] | None = None) -> dict[str, dict]:
    """key -> {"image", "metrics", "models", "protocols"}: per metric, the latest value for the image now on
    record, under the metric's current protocol (values of an older protocol are dropped).

    With `scores`, the entries are merged into it (in place) and it is returned.
    """
    out: dict[str, dict] = {} if scores is None else scores
    for entry in entries:
        cur = out.get(entry["key"])
        if cur is None or cur["image"] != entry["image"]:  # a redone job's new image starts afresh
            cur = out[entry["key"]] = {"image": entry["image"], "metrics": {}, "models": {}, "protocols": {}}
        for name, value in entry["metrics"].items():
            protocol = _protocol(entry, name)
            if name in METRICS and protocol != METRICS[name].protocol:
                continue
            cur["metrics"][name] = value
            cur["models"][name] = entry["models"].get(name)
            cur["protocols"][name] = protocol
    return out


def load_scores(out_dir: str | Path) -> dict[str, dict]:
    """The folder's scores by job key (empty when it was never scored); never raises on a damaged file."""
    entries, _ = ScoresLog(Path(out_dir) / SCORES).read()
    return merge(entries)


# ---- the scoring pass ----
@dataclass
class Item:
    key: str
    image: Path
    image_rel: str
    reference: Path | None
    prompt: str


@dataclass
class ScoreSummary:
    images: int = 0  # done rows in the folder
    scored: int = 0  # images that got new values now
    skipped: int = 0  # already scored with the same models
    values: int = 0  # metric values written now
    stored: int = 0  # run-store rows updated
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what could not be scored (the pass exits non-zero)


def folder_items(out: Path, problems: list[str] | None = None) -> list[Item]:
    """The done rows of a run folder whose image is whole, in results order (latest row per job key).

    What cannot be scored is said in `problems` (one line each, counted): unreadable results lines, images
    missing or damaged (checked against the row's sha256, else decoded), references that cannot be read. A
    results.jsonl without one readable row is a one-line UserError."""
    problems = [] if problems is None else problems
    results = out / "results.jsonl"
    if not results.is_file():
        raise UserError("no results.jsonl here", field="dir", value=str(out), fix="give the --output-dir of a vlbench run")
    rows, bad = ResultsLog(results).read()
    if bad and not rows:
        raise UserError(f"none of its {bad} line(s) is a results row", field="dir", value=str(results),
                        fix="give the --output-dir of a vlbench run (vlbench run rewrites a damaged results.jsonl "
                            "when it resumes)")
    if bad:
        problems.append(f"{results.name}: {bad} unreadable line(s) skipped (vlbench run drops them when it resumes)")
    items, missing, damaged, no_ref = [], [], [], []
    readable: dict[str, bool] = {}  # many rows share a reference: decode each once

    def whole(path) -> bool:
        if str(path) not in readable:
            readable[str(path)] = png_ok(path)
        return readable[str(path)]

    for row in latest_by_key(rows).values():
        if row["status"] != "done":
            continue
        image = out / row["image"]
        if not image.is_file():
            missing.append(row["image"])
            continue
        if not png_ok(image, row.get("image_sha256")):
            damaged.append(row["image"])
            continue
        path, sha = first_reference(row)
        ref = out / reference_copy(path, sha)  # the folder's own copy first
        if not whole(ref):
            ref = Path(path) if path and whole(path) else None
            if ref is None and path:
                no_ref.append(row["image"])
        items.append(Item(row["key"], image, row["image"], ref, row["prompt"]))
    for images, what in ((missing, "missing"), (damaged, "damaged (not the bytes the run wrote)")):
        if images:
            problems.append(f"{len(images)} image(s) {what}, not scored (e.g. {images[0]}); re-run the same "
                            "vlbench run command to redo them")
    if no_ref:
        problems.append(f"{len(no_ref)} image(s) have no readable reference (e.g. {no_ref[0]})")
    return items


def needed(item: Item, metrics: tuple[str, ...], sources: dict[str, str], scores: dict[str, dict]) -> list[str]:
    """The metrics `item` still lacks: never scored, scored on another image, by another model, or under
    another protocol."""
    have = scores.get(item.key)
    out = []
    for name in metrics:
        source = sources[METRICS[name].family]
        if have is None or have["image"] != item.image_rel or name not in have["metrics"] \
                or have["models"].get(name) != source \
                or have.get("protocols", {}).get(name, "1") != METRICS[name].protocol:
            out.append(name)
    return out


class _Embeddings:
    """Embeddings of prompts and references, computed once per pass (many images share them)."""

    def __init__(self, models, batch_size: int):
        self.models, self.batch_size = models, batch_size
        self.cache: dict[tuple[str, str, str], Any] = {}

    def texts(self, family: str, texts: list[str]):
        from vlbench.metrics.models import text_embeds

        return self._get(family, "text", texts, lambda chunk: text_embeds(self.models[family], chunk))

    def references(self, family: str, paths: list[Path]):
        from vlbench.metrics.models import image_embeds

        return self._get(family, "ref", [str(p) for p in paths],
                         lambda chunk: image_embeds(self.models[family], [_open(p) for p in chunk]))

    def _get(self, family: str, kind: str, keys: list[str], compute):
        import torch

        missing = list(dict.fromkeys(k for k in keys if (family, kind, k) not in self.cache))
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i:i + self.batch_size]
            for k, emb in zip(chunk, compute(chunk)):
                self.cache[(family, kind, k)] = emb
        return torch.stack([self.cache[(family, kind, k)] for k in keys])

    def reference_grams(self, paths: list[Path]):
        """VGG-19 Gram matrices of references: per style layer, [B, C*C]."""
        import torch

        from vlbench.metrics.style import grams

        keys = [str(p) for p in paths]
        missing = list(dict.fromkeys(k for k in keys if ("vgg", "ref", k) not in self.cache))
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i:i + self.batch_size]
            layers = grams(self.models["vgg"].model, [_open(p) for p in chunk])
            for j, k in enumerate(chunk):
                self.cache[("vgg", "ref", k)] = [g[j] for g in layers]
        per_key = [self.cache[("vgg", "ref", k)] for k in keys]
        return [torch.stack([g[layer] for g in per_key]) for layer in range(len(per_key[0]))]


def _open(path: str | Path):
    from vlbench.engine.extract import load_image

    return load_image(path)


def score_items(models, items: list[Item], wanted: dict[str, list[str]], emb: _Embeddings) -> dict[str, dict]:
    """Compute `wanted[item.key]` for one batch of items -> key -> {metric: value}."""
    import torch

    from vlbench.metrics import models as M

    out: dict[str, dict] = {it.key: {} for it in items}
    images: dict[str, Any] = {}

    def pil(it: Item):
        if it.key not in images:
            images[it.key] = _open(it.image)
        return images[it.key]

    def members(name: str, group: list[Item]) -> list[int]:
        """Positions in `group` of the items that want `name` (and have a reference, if it needs one)."""
        idx = [i for i, it in enumerate(group) if name in wanted[it.key]]
        if METRICS[name].needs_reference:
            idx = [i for i in idx if group[i].reference is not None]
        return idx

    def put(name: str, group: list[Item], idx: list[int], values) -> None:
        for i, v in zip(idx, values.tolist() if hasattr(values, "tolist") else values):
            out[group[i].key][name] = float(v)

    families: dict[str, dict[str, Item]] = {}  # family -> the items that need one of its metrics, in order
    for it in items:
        for name in wanted[it.key]:
            families.setdefault(METRICS[name].family, {})[it.key] = it
    for fam, member_items in families.items():
        group = list(member_items.values())
        names = [n for n in METRICS if METRICS[n].family == fam]
        if fam == "imagereward":
            loaded = models[fam]
            for it in group:
                out[it.key]["imagereward"] = M.imagereward_scores(loaded, it.prompt, [str(it.image)])[0]
            continue
        if fam == "vqa":
            from vlbench.metrics import vqa

            judge = models[fam].model  # a VLModel: the run's own Qwen3-VL, or one loaded for scoring
            idx = members("vqascore", group)
            if idx:
                put("vqascore", group, idx, vqa.vqascore(judge, [pil(group[i]) for i in idx],
                                                         [group[i].prompt for i in idx]))
            idx = members("content_leak", group)
            if idx:
                put("content_leak", group, idx, vqa.content_leak(judge, [_open(group[i].reference) for i in idx],
                                                                 [pil(group[i]) for i in idx]))
            continue
        if fam == "vgg":
            from vlbench.metrics.style import grams, style_similarity

            idx = members("style_gram", group)
            if idx:
                own = grams(models[fam].model, [pil(group[i]) for i in idx])
                refs = emb.reference_grams([group[i].reference for i in idx])
                put("style_gram", group, idx, style_similarity(own, refs))
            continue
        loaded = models[fam]
        own = M.image_embeds(loaded, [pil(it) for it in group])  # [B, E] of the outputs
        for name in names:
            idx = members(name, group)
            if not idx:
                continue
            sub = own[idx]
            if METRICS[name].needs_reference:
                values = M.cosine(sub, emb.references(fam, [group[i].reference for i in idx]))
            else:
                text = emb.texts(fam, [group[i].prompt for i in idx])
                if name in ("siglip", "siglip_p"):
                    values = M.siglip_logit(loaded, sub, text)
                    values = torch.sigmoid(values) if name == "siglip_p" else values
                elif name == "pickscore":
                    values = M.pickscore(loaded, sub, text)
                else:
                    values = M.cosine(sub, text)
            put(name, group, idx, values)
    return out


def score_folder(out_dir: str | Path, metrics: tuple[str, ...], models, *, batch_size: int = 16, store=None,
                 console=None, on_batch: Callable[[int], None] | None = None) -> ScoreSummary:
    """Score every done image of a run folder that lacks one of `metrics`; returns what happened.

    `models` is a MetricModels (loaded lazily: a fully scored folder loads nothing). `on_batch(n)`
    is called after each batch is written (tests interrupt from it).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError("must be a whole number >= 1", field="batch_size", value=batch_size)
    check_available(metrics)
    out = Path(out_dir)
    problems: list[str] = []
    items = folder_items(out, problems)
    log = ScoresLog(out / SCORES)
    entries, bad = log.read()
    if bad or log.needs_newline():  # a pass killed mid-write: drop the torn line before appending
        log.rewrite(entries)
    scores = merge(entries)
    summary = ScoreSummary(images=len(items), problems=problems)
    pending = [(it, needed(it, metrics, models.sources, scores)) for it in items]
    todo = [(it, names) for it, names in pending if names]
    summary.skipped = len(items) - len(todo)
    ref_metrics = [m for m in metrics if METRICS[m].needs_reference]
    no_ref = [it for it, names in todo if it.reference is None and set(ref_metrics) & set(names)]
    if no_ref and not any("readable reference" in p for p in problems):
        summary.warnings.append(f"{len(no_ref)} image(s) have no reference file (neither the folder's copy nor "
                                f"the original, e.g. {no_ref[0].image_rel}): {'/'.join(ref_metrics)} skipped for them")
    emb = _Embeddings(models, batch_size)
    _warn_truncation(models, metrics, [it for it, _ in todo], summary)
    recorder = _StoreSync(store, out)
    with _Progress(console, len(todo)) as progress:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            wanted = {it.key: names for it, names in batch}
            values = score_items(models, [it for it, _ in batch], wanted, emb)
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            new = [{"key": it.key, "image": it.image_rel, "metrics": values[it.key],
                    "models": {m: models.sources[METRICS[m].family] for m in values[it.key]},
                    "protocols": {m: METRICS[m].protocol for m in values[it.key]}, "scored_at": now}
                   for it, _ in batch if values[it.key]]
            log.append(new)  # the batch is on disk before anyone is told it is done
            merge(new, scores)
            summary.scored += len(new)
            summary.values += sum(len(e["metrics"]) for e in new)
            summary.stored += recorder.sync([(it, scores[it.key]) for it, _ in batch if it.key in scores])
            progress.advance(len(batch))
            if on_batch is not None:
                on_batch(start // batch_size + 1)
    # Images scored by an earlier pass (maybe one killed before it reached the store): store them too.
    summary.stored += recorder.sync([(it, scores[it.key]) for it, names in pending if not names and it.key in scores])
    summary.warnings += recorder.warnings
    return summary


def _warn_truncation(models, metrics: tuple[str, ...], items: list[Item], summary: ScoreSummary) -> None:
    from vlbench.metrics.models import text_limit, truncated

    prompts = list(dict.fromkeys(it.prompt for it in items))
    for fam in dict.fromkeys(METRICS[m].family for m in metrics):
        if fam not in ("siglip", "clip", "pickscore") or not any(
                METRICS[m].family == fam and not METRICS[m].needs_reference for m in metrics) or not prompts:
            continue
        long = truncated(models[fam], prompts)
        if long:
            summary.warnings.append(f"{len(long)} prompt(s) are longer than {fam}'s {text_limit(models[fam])} text "
                                    f"tokens and are scored on their start only (e.g. {long[0][:60]!r})")


class _StoreSync:
    """Copies a folder's scores into the run store; a store problem never stops the pass."""

    def __init__(self, store, out: Path):
        self.store, self.out, self.warnings = store, out, []

    def sync(self, pairs: list[tuple[Item, dict]]) -> int:
        if self.store is None or not pairs:
            return 0
        try:
            ids = self.store.ids_by_image([str(it.image.resolve()) for it, _ in pairs])
            n = 0
            for it, score in pairs:
                for run_id in ids.get(str(it.image.resolve()), []):
                    n += self.store.set_metrics(run_id, {**score["metrics"], "metric_models": score["models"]})
            return n
        except Exception as exc:  # noqa: BLE001 — the folder is the primary record
            if not self.warnings:
                self.warnings.append(f"run store: {exc.__class__.__name__}: {exc}; scores are in {SCORES} only")
            return 0


class _Progress:
    def __init__(self, console, total: int):
        self.console, self.total, self.bar = console, total, None

    def __enter__(self):
        if self.console is not None and self.total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                console=self.console)
            self.bar.__enter__()
            self.task = self.bar.add_task("scoring", total=self.total)
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)
