"""Score a run folder's images: a separate pass over results.jsonl, batched and resumable.

Scores go to `scores.jsonl` beside results.jsonl, one line per scored image (job key, image,
values, the model each value came from), appended and fsynced after each batch; results.jsonl is
never touched. A killed pass loses at most the batch in flight; re-running skips every image
already scored with the same model, and a torn last line is dropped. Values also go into the run
store (Store.set_metrics) for the rows the runner recorded, found by their output path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from vlbench.errors import UserError
from vlbench.experiments.results import JsonlLog
from vlbench.metrics import METRICS

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


def merge(entries: list[dict], scores: dict[str, dict] | None = None) -> dict[str, dict]:
    """key -> {"image", "metrics", "models"}: per metric, the latest value for the image now on record.

    With `scores`, the entries are merged into it (in place) and it is returned.
    """
    out: dict[str, dict] = {} if scores is None else scores
    for entry in entries:
        cur = out.get(entry["key"])
        if cur is None or cur["image"] != entry["image"]:  # a redone job's new image starts afresh
            cur = out[entry["key"]] = {"image": entry["image"], "metrics": {}, "models": {}}
        cur["metrics"].update(entry["metrics"])
        cur["models"].update({m: entry["models"].get(m) for m in entry["metrics"]})
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


def folder_items(out: Path) -> list[Item]:
    """The done rows of a run folder whose image exists, in results order (latest row per job key)."""
    from vlbench.experiments.results import ResultsLog, first_reference, latest_by_key, reference_copy

    results = out / "results.jsonl"
    if not results.is_file():
        raise UserError(f"{out}: no results.jsonl here; give the --output-dir of a vlbench run")
    rows, _ = ResultsLog(results).read()
    items = []
    for row in latest_by_key(rows).values():
        if row["status"] != "done" or not (out / row["image"]).is_file():
            continue
        path, sha = first_reference(row)
        ref = out / reference_copy(path, sha)  # the folder's own copy first
        if not ref.is_file():
            ref = Path(path) if path and Path(path).is_file() else None
        items.append(Item(row["key"], out / row["image"], row["image"], ref, row["prompt"]))
    return items


def needed(item: Item, metrics: tuple[str, ...], sources: dict[str, str], scores: dict[str, dict]) -> list[str]:
    """The metrics `item` still lacks: never scored, scored on another image, or by another model."""
    have = scores.get(item.key)
    out = []
    for name in metrics:
        source = sources[METRICS[name].family]
        if have is None or have["image"] != item.image_rel or name not in have["metrics"] \
                or have["models"].get(name) != source:
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


def _open(path: str | Path):
    from vlbench.engine.extract import load_image

    return load_image(path)


def score_items(models, items: list[Item], wanted: dict[str, list[str]], emb: _Embeddings) -> dict[str, dict]:
    """Compute `wanted[item.key]` for one batch of items -> key -> {metric: value}."""
    from vlbench.metrics import models as M

    out: dict[str, dict] = {it.key: {} for it in items}
    images: dict[str, Any] = {}

    def pil(it: Item):
        if it.key not in images:
            images[it.key] = _open(it.image)
        return images[it.key]

    families: dict[str, dict[str, Item]] = {}  # family -> the items that need one of its metrics, in order
    for it in items:
        for name in wanted[it.key]:
            families.setdefault(METRICS[name].family, {})[it.key] = it
    for fam, members in families.items():
        group = list(members.values())
        if fam == "imagereward":
            loaded = models[fam]
            for it in group:
                out[it.key]["imagereward"] = M.imagereward_scores(loaded, it.prompt, [str(it.image)])[0]
            continue
        loaded = models[fam]
        own = M.image_embeds(loaded, [pil(it) for it in group])  # [B, E] of the outputs
        for name in [n for n in METRICS if METRICS[n].family == fam]:
            idx = [i for i, it in enumerate(group) if name in wanted[it.key]]
            if name in ("clip_i", "dino"):
                idx = [i for i in idx if group[i].reference is not None]
            if not idx:
                continue
            sub = own[idx]
            if METRICS[name].kind == "adherence":
                text = emb.texts(fam, [group[i].prompt for i in idx])
                values = M.siglip_probability(loaded, sub, text) if name == "siglip" else M.cosine(sub, text)
            else:
                values = M.cosine(sub, emb.references(fam, [group[i].reference for i in idx]))
            for i, v in zip(idx, values.tolist()):
                out[group[i].key][name] = float(v)
    return out


def score_folder(out_dir: str | Path, metrics: tuple[str, ...], models, *, batch_size: int = 16, store=None,
                 console=None, on_batch: Callable[[int], None] | None = None) -> ScoreSummary:
    """Score every done image of a run folder that lacks one of `metrics`; returns what happened.

    `models` is a MetricModels (loaded lazily: a fully scored folder loads nothing). `on_batch(n)`
    is called after each batch is written (tests interrupt from it).
    """
    from vlbench.metrics import check_available

    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be a whole number >= 1")
    check_available(metrics)
    out = Path(out_dir)
    items = folder_items(out)
    log = ScoresLog(out / SCORES)
    entries, bad = log.read()
    if bad or log.needs_newline():  # a pass killed mid-write: drop the torn line before appending
        log.rewrite(entries)
    scores = merge(entries)
    summary = ScoreSummary(images=len(items))
    pending = [(it, needed(it, metrics, models.sources, scores)) for it in items]
    todo = [(it, names) for it, names in pending if names]
    summary.skipped = len(items) - len(todo)
    no_ref = [it for it, names in todo if it.reference is None and {"clip_i", "dino"} & set(names)]
    if no_ref:
        summary.warnings.append(f"{len(no_ref)} image(s) have no reference file (neither the folder's copy nor "
                                f"the original, e.g. {no_ref[0].image_rel}): clip_i/dino skipped for them")
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
                    "models": {m: models.sources[METRICS[m].family] for m in values[it.key]}, "scored_at": now}
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
    for fam in dict.fromkeys(METRICS[m].family for m in metrics if METRICS[m].kind == "adherence"):
        if fam == "imagereward" or not prompts:
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
