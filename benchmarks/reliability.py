"""Issue 13's reliability campaign, re-run: what users and faults do to vlbench, and what is left afterwards.

Sections (all on the CPU with the tiny random models; each `vlbench` is a fresh process of this checkout):

  kill      15 `kill -9` of `vlbench run` (60 images: token_sweep's 6 configs × 10 seeds; the 2026-12-01
            results ran its 5 configs of then × 12 seeds) at chosen moments (model load,
            after rows 1/7/20/33/45/59/60, between a results row and its store write, during the grid, the
            report and the diagnostics) and at random ones. Each is resumed by the same command; then the
            folder AND the run store are checked against an uninterrupted run: lost, duplicated, torn, PNG
            bytes identical, one history row per image with the folder's sha256.
  hostile   115+ hostile inputs (flags, prompts, files, paths, images, environments) to every command:
            each must exit 0 with a correct result, or exit non-zero with one error line; tracebacks, hangs
            and silently wrong results (NaN or flat images, refusals that should have happened) are counted.
  store     store faults during `vlbench run` and under the headless worker: locked past the busy timeout,
            disk full, read-only, deleted. Nothing lost, nothing stranded, one line each.
  ssh       a headless worker started from a shell on a pseudo-terminal (setsid, plain &, nohup); the
            terminal closes; the queue must finish.
  ray       the listeners of a one-host Ray run (`--executor ray`): loopback only.
  silent    issue 26: EXIF orientation and bit depth read as meant (checked in the record and the pixels), FIFO /
            /dev/zero / 17 MB / folder for every file flag, 100000-deep TOML, a full disk under the data folder, a
            0×0 terminal, texts and layers refused before any model loads, 20 `vlbench worker` released together
            (exactly one may run the queue), the data folder's permissions.

Faults that need a full or read-only filesystem use a private tmpfs (`unshare -m`, root or user namespaces);
where that is not allowed the case is reported as skipped. Usage:

    .venv/bin/python benchmarks/reliability.py --out benchmarks/results/2026-12-01_cpu_reliability.json
    .venv/bin/python benchmarks/reliability.py --sections kill --trials 2 --quick   # the small version
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))
PY = sys.executable
PROMPT = "a red square"
TINY = ["--tiny", "--device", "cpu"]
SMALL = ["--steps", "2", "--width", "64", "--height", "64"]


# ---------------------------------------------------------------- helpers
def env_for(data: Path, **extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(SRC), VLBENCH_DATA_DIR=str(data), VLBENCH_CONFIG_DIR=str(data) + "-config",
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def vlbench(argv: list[str], env: dict, timeout: float = 300, cwd: Path | None = None, wrap: str | None = None):
    """Run `python -m vlbench ARGV`; returns (exit code or 'hang', stdout, stderr, seconds)."""
    cmd = [PY, "-m", "vlbench", *argv]
    if wrap is not None:  # a shell snippet around the command: {cmd} is replaced by it, quoted
        import shlex

        cmd = ["sh", "-c", wrap.replace("{cmd}", " ".join(shlex.quote(c) for c in cmd))]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, errors="replace",
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        return "hang", exc.stdout or "", exc.stderr or "", time.monotonic() - start
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start


def make_image(path: Path, size=(96, 64), color=(200, 40, 40)) -> Path:
    from PIL import Image

    img = Image.new("RGB", size, color)
    for x in range(0, size[0], 8):
        for y in range(0, size[1], 8):
            if (x // 8 + y // 8) % 2:
                img.putpixel((x, y), (x * 2 % 256, y * 3 % 256, 90))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def results_rows(out: Path) -> tuple[list[dict], int]:
    """(readable rows, torn or unreadable lines) of a folder's results.jsonl."""
    rows, bad = [], 0
    path = out / "results.jsonl"
    if not path.exists():
        return rows, 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            bad += 1
    return rows, bad


def store_rows(data: Path, out: Path) -> list[tuple[str, str | None]]:
    """(image, sha256) of the store's rows for the folder's images (read without vlbench, plain SQLite)."""
    path = data / "runs.sqlite3"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        prefix = str(out.resolve()) + os.sep
        return [(r[0], r[1]) for r in conn.execute("SELECT image, image_sha256 FROM runs WHERE image LIKE ?",
                                                  (prefix + "%",))]
    finally:
        conn.close()


def can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
                              capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def one_error_line(code, err: str) -> bool:
    """Exit non-zero with exactly one error line (`vlbench: error: …`, or `failed: …` for a job that ran)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("vlbench: error:")]
    if errors:
        return len(errors) == 1 and lines[-1] == errors[0]
    return code == 1 and bool(lines) and any(ln.startswith("failed:") for ln in lines)


def traceback_in(*texts: str) -> bool:
    return any("Traceback (most recent call last)" in t for t in texts)


# ---------------------------------------------------------------- kill -9 trials
HOOKS = r"""
import os, sys, time
sys.path.insert(0, os.environ["CAMPAIGN_SRC"])
markers = open(os.environ["CAMPAIGN_MARKERS"], "a", buffering=1)
pause = float(os.environ.get("CAMPAIGN_PAUSE", "0"))
pause_at = os.environ.get("CAMPAIGN_PAUSE_AT", "")  # only the trigger's moment is held open for the kill

def mark(text, wait=False):
    markers.write(text + "\n")
    markers.flush()
    if wait and pause and text == pause_at:
        time.sleep(pause)

from vlbench.cli import common
real_engine = common.engine
def engine(*a, **k):
    mark("engine", True)   # the models load lazily from here on
    return real_engine(*a, **k)
common.engine = engine

from vlbench.experiments import results, folder
real_append = results.ResultsLog.append
count = [0]
def append(self, row):
    real_append(self, row)
    count[0] += 1
    mark(f"row {count[0]}")
results.ResultsLog.append = append

real_record = folder.record_image
def record_image(store, record):
    mark(f"store {count[0]}", True)   # the results row is on disk, the history row is not yet
    return real_record(store, record)
folder.record_image = record_image

from vlbench.experiments import grid
real_grid = grid.write_grid
def write_grid(*a, **k):
    mark("grid", True)
    return real_grid(*a, **k)
grid.write_grid = write_grid

from vlbench.analysis import report
real_report = report.write_report
def write_report(*a, **k):
    mark("report", True)
    return real_report(*a, **k)
report.write_report = write_report

from vlbench.analysis import diagnose
real_diag = diagnose.diagnose_run
def diagnose_run(*a, **k):
    mark("diagnostics", True)
    return real_diag(*a, **k)
diagnose.diagnose_run = diagnose_run

from vlbench.cli import main
sys.exit(main(sys.argv[1:]))
"""

CHOSEN = [("model load", "engine"), ("after row 1", "row 1"), ("after row 7", "row 7"), ("after row 20", "row 20"),
          ("after row 33", "row 33"), ("after row 45", "row 45"), ("after row 59", "row 59"),
          ("after row 60", "row 60"), ("between results row 7 and its store write", "store 7"),
          ("between results row 33 and its store write", "store 33"), ("during the grid", "grid"),
          ("during the report", "report"), ("during the diagnostics", "diagnostics")]


def run_argv(ref: Path, out: Path, seeds: str) -> list[str]:
    return ["run", "--experiment", "token_sweep", "--image", str(ref), "--prompt", PROMPT, "--seeds", seeds,
            "--output-dir", str(out), *TINY, *SMALL]


def kill_section(work: Path, trials: int, seeds: str, rng: random.Random, log) -> dict:
    ref = make_image(work / "ref.png")
    # the uninterrupted run every trial is compared with
    ref_data, ref_out = work / "reference-data", work / "reference"
    code, _, err, seconds = vlbench(run_argv(ref, ref_out, seeds), env_for(ref_data), timeout=900)
    assert code == 0, err[-2000:]
    expected, _ = results_rows(ref_out)
    images = {r["image"]: (ref_out / r["image"]).read_bytes() for r in expected}
    log(f"reference run: {len(expected)} images in {seconds:.1f} s")
    plan = list(CHOSEN)
    while len(plan) < trials:
        at = rng.uniform(0.5, seconds)
        plan.append((f"random at {at:.2f} s", f"time {at:.3f}"))
    if trials < len(plan):  # the small version: a store gap and a random moment
        plan = [p for p in plan if p[1].startswith("store")][:1] + [(f"random", f"time {rng.uniform(1, seconds):.3f}")]
        plan = plan[:trials]
    out_trials = []
    for i, (label, trigger) in enumerate(plan):
        data, out = work / f"t{i}-data", work / f"t{i}"
        markers = work / f"t{i}.markers"
        markers.write_text("")
        env = env_for(data, CAMPAIGN_SRC=str(SRC), CAMPAIGN_MARKERS=str(markers), CAMPAIGN_PAUSE="0.4",
                      CAMPAIGN_PAUSE_AT=trigger)
        proc = subprocess.Popen([PY, "-c", HOOKS, *run_argv(ref, out, seeds)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        start = time.monotonic()
        killed_at = None
        deadline = start + 900
        while proc.poll() is None and time.monotonic() < deadline:
            seen = markers.read_text().splitlines()
            now = time.monotonic() - start
            if (trigger.startswith("time ") and now >= float(trigger.split()[1])) or trigger in seen:
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = now
                break
            time.sleep(0.003)
        proc.wait()
        before, torn = results_rows(out)
        in_store = store_rows(data, out)
        done_before = {r["image"] for r in before if r.get("status") == "done"}
        lag = len({str((out / i).resolve()) for i in done_before} - {p for p, _ in in_store})
        # resume: the same command, no hooks
        code, _, err, resume_s = vlbench(run_argv(ref, out, seeds), env_for(data), timeout=900)
        after, torn_after = results_rows(out)
        keys = [r["key"] for r in after]
        done = {r["image"]: r for r in after if r["status"] == "done"}
        lost = [name for name in images if name not in done or not (out / name).is_file()]
        differ = [name for name in images if name in done and (out / name).is_file()
                  and (out / name).read_bytes() != images[name]]
        bad_sha = [name for name, r in done.items() if (out / name).is_file() and
                   hashlib.sha256((out / name).read_bytes()).hexdigest() != r.get("image_sha256")]
        history = store_rows(data, out)
        paths = [p for p, _ in history]
        folder_paths = {str((out / n).resolve()): r.get("image_sha256") for n, r in done.items()}
        trial = {
            "moment": label, "trigger": trigger, "killed": killed_at is not None,
            "killed_at_s": None if killed_at is None else round(killed_at, 3),
            "rows_before_resume": len(before), "torn_lines_before_resume": torn,
            "store_rows_before_resume": len(in_store), "store_lag_before_resume": lag,
            "resume_exit": code, "resume_s": round(resume_s, 2),
            "folder": {"rows": len(after), "lost": len(lost), "duplicated": len(keys) - len(set(keys)),
                       "torn_lines": torn_after, "pixels_differ": len(differ), "sha_mismatch": len(bad_sha),
                       "grid": (out / "grid.png").is_file(), "report": (out / "report.html").is_file()},
            "store": {"rows": len(history), "lost": len(set(folder_paths) - set(paths)),
                      "duplicated": len(paths) - len(set(paths)),
                      "sha_mismatch": sum(1 for p, s in history if folder_paths.get(p) not in (None, s)),
                      "extra": len(set(paths) - set(folder_paths))},
        }
        if code != 0:
            trial["resume_error"] = err.strip().splitlines()[-1:] if err.strip() else []
        out_trials.append(trial)
        log(f"kill {i + 1:2d}/{len(plan)} {label:45s} killed={trial['killed']!s:5} rows {len(before):2d}→{len(after)} "
            f"store {len(in_store):2d}→{len(history)} (lag {lag}) lost {len(lost)}/{trial['store']['lost']} "
            f"dup {trial['folder']['duplicated']}/{trial['store']['duplicated']} differ {len(differ)}")
    totals = {
        "trials": len(out_trials), "killed": sum(t["killed"] for t in out_trials),
        "folder_lost": sum(t["folder"]["lost"] for t in out_trials),
        "folder_duplicated": sum(t["folder"]["duplicated"] for t in out_trials),
        "folder_torn_after_resume": sum(t["folder"]["torn_lines"] for t in out_trials),
        "pixels_differ": sum(t["folder"]["pixels_differ"] for t in out_trials),
        "store_lost": sum(t["store"]["lost"] for t in out_trials),
        "store_duplicated": sum(t["store"]["duplicated"] for t in out_trials),
        "store_sha_mismatch": sum(t["store"]["sha_mismatch"] for t in out_trials),
        "store_lag_before_resume": sum(t["store_lag_before_resume"] for t in out_trials),
        "resumes_failed": sum(t["resume_exit"] != 0 for t in out_trials),
    }
    return {"images": len(expected), "reference_run_s": round(seconds, 2), "totals": totals, "trials": out_trials}


# ---------------------------------------------------------------- hostile inputs
def hostile_cases(w: Path) -> list[dict]:
    """Each: id, argv, expect ('ok': must succeed; 'refuse': must be refused; 'either'), check (for exit 0),
    optional env (extra variables), wrap (a shell snippet around the command), needs ('unshare')."""
    ref = make_image(w / "ref.png")
    other = make_image(w / "b.png", size=(64, 64), color=(20, 40, 200))
    (w / "dir").mkdir(exist_ok=True)
    (w / "file").write_text("x")
    (w / "corrupt.png").write_bytes(os.urandom(3000))
    (w / "empty.png").write_bytes(b"")
    (w / "text.png").write_text("just text")
    trunc = (w / "trunc.png")
    trunc.write_bytes(ref.read_bytes()[:200])
    make_image(w / "one.png", size=(1, 1))
    make_image(w / "wide.png", size=(2000, 3))
    _bomb(w / "bomb.png")
    os.mkfifo(w / "fifo") if not (w / "fifo").exists() else None
    (w / "big.toml").write_bytes(b"# " + b"x" * (17 * 2**20) + b"\n")
    files = {
        "nan.toml": "alpha = nan\n", "inf.toml": "guidance = inf\n", "weights.toml": "image_weights = [nan, 1.0]\n",
        "unknown.toml": "colour = \"red\"\n", "type.toml": "seed = \"two\"\n", "bad.toml": "alpha = = 1\n",
        "neg.toml": "guidance = -3\n", "nul.toml": "normalization = \"per-dim\"\ncalibration = \"a\\u0000b\"\n",
        "huge_int.toml": "seed = 99999999999999999999999999\n", "table.toml": "[alpha]\nx = 1\n",
        "ok.toml": "steps = 2\nwidth = 64\nheight = 64\nalpha = 0.5\nvl_text = \"none\"\n",
        "binary.toml": None,
        "exp_bad.toml": "name = \"t\"\n[[configs]]\nname = \"a\"\nlayer = \"deep\"\n",
        "exp_nan.toml": "name = \"t\"\n[[configs]]\nname = \"a\"\nalpha = nan\n",
        "exp_dup.toml": "name = \"t\"\n[[configs]]\nname = \"a\"\n[[configs]]\nname = \"a\"\n",
        "exp_path.toml": "name = \"t\"\n[[configs]]\nname = \"../../etc/x\"\n",
        "exp_long.toml": "name = \"t\"\n[[configs]]\nname = \"" + "a" * 300 + "\"\n",
        "exp_empty.toml": "", "exp_noconf.toml": "name = \"t\"\n",
        "exp_ok.toml": "name = \"t\"\n[[configs]]\nname = \"a\"\nlayer = -2\n",
        "prompts_empty.txt": "", "prompts_comments.txt": "# a\n\n   \n# b\n", "prompts_ok.txt": "a cat\n\na dog\n",
        "prompts_special.txt": "a <|im_start|> cat\n", "prompts_long.txt": "x" * 20000 + "\n",
        "prompts.toml": "prompts = [1, 2]\n", "prompts_ok.toml": "prompts = [\"a cat\"]\n",
        "prompts_bad.toml": "prompts = [\n",
        "results_garbage.jsonl": "not json\n{}\n[1,2]\n",
    }
    for name, text in files.items():
        if text is None:
            (w / name).write_bytes(os.urandom(500))
        else:
            (w / name).write_text(text, encoding="utf-8")
    (w / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (w / "cfg_bad").mkdir(exist_ok=True)
    (w / "cfg_bad" / "config.toml").write_text("[recipe\nalpha=")
    (w / "cfg_nan").mkdir(exist_ok=True)
    (w / "cfg_nan" / "config.toml").write_text("[recipe]\nalpha = nan\n")

    G = ["generate", *TINY, "--image", str(ref), "--prompt", "a red fox", *SMALL, "--no-store"]
    E = ["embed", *TINY, "--image", str(ref), "--prompt", "a red fox"]
    R = ["run", "--experiment", "layer_sweep", "--quick", *TINY, "--seeds", "1", *SMALL, "--image", str(ref),
         "--no-diagnostics", "--no-store"]

    def gen(name, extra, expect="refuse", **kw):
        return dict(id=f"generate {name}", argv=[*G, *extra, "--out", str(w / "out" / f"{_slug(name)}.png")],
                    expect=expect, check="png", out=str(w / "out" / f"{_slug(name)}.png"), **kw)

    def gen_prompt(name, prompt, expect):
        argv = [a for a in G if a not in ("a red fox",)]
        argv[argv.index("--prompt") + 1:argv.index("--prompt") + 1] = [prompt]
        return dict(id=f"generate prompt {name}", argv=[*argv, "--out", str(w / "out" / f"p_{_slug(name)}.png")],
                    expect=expect, check="png", out=str(w / "out" / f"p_{_slug(name)}.png"))

    def emb(name, extra, expect="refuse", check="tensor"):
        out = w / "out" / f"{_slug(name)}.safetensors"
        return dict(id=f"embed {name}", argv=[*E, *extra, "--out", str(out)], expect=expect, check=check, out=str(out))

    def run(name, extra, expect="refuse", prompt=True, **kw):
        out = w / "runs" / _slug(name)
        argv = [*R, *(["--prompt", "a cat"] if prompt else []), *extra]
        if "--output-dir" not in extra:
            argv += ["--output-dir", str(out)]
        return dict(id=f"run {name}", argv=argv, expect=expect, check="run", out=str(out), **kw)

    (w / "out").mkdir(exist_ok=True)
    cases = [
        # prompts
        gen_prompt("blank", "", "refuse"), gen_prompt("spaces", "   ", "refuse"), gen_prompt("newlines", "\n\n", "refuse"),
        gen_prompt("multi-line", "a\nb", "ok"), gen_prompt("tab", "a\tb", "ok"), gen_prompt("escape", "a\x1b[31mb", "ok"),
        gen_prompt("undecodable byte", "a\udcffb", "refuse"), gen_prompt("im_start", "a <|im_start|> b", "refuse"),
        gen_prompt("im_end", "a <|im_end|>", "refuse"), gen_prompt("vision_start", "<|vision_start|>", "refuse"),
        gen_prompt("image_pad", "x <|image_pad|>", "refuse"), gen_prompt("think", "<think>x</think>", "refuse"),
        gen_prompt("endoftext", "<|endoftext|>", "refuse"), gen_prompt("huge", "word " * 3000, "refuse"),
        gen_prompt("emoji", "🦊" * 10, "ok"), gen_prompt("rtl override", "abc\u202edef", "ok"),
        gen_prompt("script", "<script>alert(1)</script>", "ok"), gen_prompt("near special", "<| im_start |>", "ok"),
        # numbers
        gen("alpha nan", ["--alpha", "nan"]), gen("alpha inf", ["--alpha", "inf"]), gen("alpha -inf", ["--alpha=-inf"]),
        gen("alpha 2", ["--alpha", "2"]), gen("alpha 1e309", ["--alpha", "1e309"]), gen("alpha hex", ["--alpha", "0x1"]),
        gen("alpha 0.5", ["--alpha", "0.5", "--vl-text", "none"], "ok"),
        gen("steps 0", ["--steps", "0"]), gen("steps -1", ["--steps=-1"]), gen("steps 1e9", ["--steps", "1e9"]),
        gen("steps 1001", ["--steps", "1001"]), gen("steps two", ["--steps", "two"]),
        gen("width 8192", ["--width", "8192", "--height", "8192"]), gen("width 65", ["--width", "65"]),
        gen("width 0", ["--width", "0"]), gen("width -64", ["--width=-64"]), gen("width 64.0", ["--width", "64.0"]),
        gen("seed -1", ["--seed=-1"]), gen("seed 2^64", ["--seed", str(2**64)]), gen("seed nan", ["--seed", "nan"]),
        gen("guidance nan", ["--guidance", "nan"]), gen("guidance -1", ["--guidance=-1"]),
        gen("guidance inf", ["--guidance", "inf"]), gen("layer 999", ["--layer", "999"]),
        gen("layer -999", ["--layer=-999"]), gen("layer nan", ["--layer", "nan"]),
        gen("image-weights nan", ["--image", str(other), "--multi-image", "separate", "--length-policy", "pool",
                                  "--image-weights", "nan,1"]),
        gen("image-weights inf", ["--image", str(other), "--multi-image", "separate", "--length-policy", "pool",
                                  "--image-weights", "inf,1"]),
        gen("image-weights 0,0", ["--image", str(other), "--multi-image", "separate", "--length-policy", "pool",
                                  "--image-weights", "0,0"]),
        gen("image-weights -1,2", ["--image", str(other), "--multi-image", "separate", "--length-policy", "pool",
                                   "--image-weights=-1,2"]),
        gen("image-weights count", ["--image", str(other), "--multi-image", "separate", "--length-policy", "pool",
                                    "--image-weights", "1,2,3"]),
        gen("image-weights 1,3", ["--image", str(other), "--multi-image", "separate", "--length-policy", "pool",
                                  "--image-weights", "1,3"], "ok"),
        gen("intra-ratio nan", ["--intra-ratio", "nan"]), gen("intra-ratio 1.5", ["--intra-ratio", "1.5"]),
        gen("max-image-tokens 0", ["--max-image-tokens", "0"]), gen("max-image-tokens 1e9", ["--max-image-tokens",
                                                                                                "1000000000"], "ok"),
        gen("strength nan", ["--strength", "nan"]), gen("strength 2", ["--strength", "2"]),
        # choices and devices
        gen("tokens bogus", ["--tokens", "bogus"]), gen("tokens empty", ["--tokens", ""]),
        gen("length-policy nope", ["--length-policy", "nope"]), gen("normalization per_dim", ["--normalization",
                                                                                              "per_dim"]),
        gen("dtype fp8x", ["--dtype", "fp8x"]), gen("device tpu", ["--device", "tpu"]),
        gen("device cuda:9", ["--device", "cuda:9"]), gen("offload nope", ["--offload", "nope"]),
        gen("gpu-memory nan", ["--gpu-memory", "nan"]), gen("unknown flag", ["--colour", "red"]),
        # images
        gen("image missing", ["--image", str(w / "missing.png")]), gen("image folder", ["--image", str(w / "dir")]),
        gen("image corrupt", ["--image", str(w / "corrupt.png")]), gen("image empty", ["--image", str(w / "empty.png")]),
        gen("image text", ["--image", str(w / "text.png")]), gen("image truncated", ["--image", str(trunc)]),
        gen("image 1x1", ["--image", str(w / "one.png")], "ok"), gen("image 2000x3", ["--image", str(w / "wide.png")],
                                                                      "either"),
        gen("image bomb", ["--image", str(w / "bomb.png")]), gen("image /dev/zero", ["--image", "/dev/zero"]),
        gen("image fifo", ["--image", str(w / "fifo")]),
        gen("image long name", ["--image", "x" * 3000]),
        # recipe files
        *[gen(f"recipe {n}", ["--recipe", str(w / n)]) for n in
          ("nan.toml", "inf.toml", "weights.toml", "unknown.toml", "type.toml", "bad.toml", "neg.toml",
           "huge_int.toml", "table.toml", "binary.toml", "big.toml")],
        gen("recipe nul calibration", ["--recipe", str(w / "nul.toml")]),
        gen("recipe ok", ["--recipe", str(w / "ok.toml")], "ok"),
        gen("recipe missing", ["--recipe", str(w / "missing.toml")]), gen("recipe folder", ["--recipe", str(w / "dir")]),
        gen("recipe /dev/zero", ["--recipe", "/dev/zero"]), gen("recipe fifo", ["--recipe", str(w / "fifo")]),
        gen("calibration missing", ["--normalization", "per-dim", "--calibration", str(w / "nope.safetensors")]),
        gen("calibration garbage", ["--normalization", "per-dim", "--calibration", str(w / "corrupt.png")]),
        gen("calibration long", ["--normalization", "per-dim", "--calibration", "x" * 3000]),
        # output paths
        dict(id="generate out is a folder", argv=[*G, "--out", str(w / "dir")], expect="refuse"),
        dict(id="generate out under a file", argv=[*G, "--out", str(w / "file" / "x.png")], expect="refuse"),
        dict(id="generate out parent missing", argv=[*G, "--out", str(w / "nope" / "x.png")], expect="refuse"),
        dict(id="generate out .jpg", argv=[*G, "--out", str(w / "x.jpg")], expect="refuse"),
        dict(id="generate out read-only fs", argv=[*G, "--out", "/tmp/vlbench-ro/x.png"], expect="refuse",
             wrap="mkdir -p /tmp/vlbench-ro && unshare -m sh -c 'mount -t tmpfs -o size=1m,ro none /tmp/vlbench-ro && "
                  "exec {cmd}'", needs="unshare"),
        dict(id="generate out disk full", argv=[*G, "--out", "/tmp/vlbench-full/x.png"], expect="refuse",
             wrap="mkdir -p /tmp/vlbench-full && unshare -m sh -c 'mount -t tmpfs -o size=4k none /tmp/vlbench-full "
                  "&& exec {cmd}'", needs="unshare"),
        # embed
        emb("campaign nan weights", ["--image", str(other), "--multi-image", "separate", "--length-policy", "pool",
                                     "--image-weights", "nan,1"]),
        emb("ok", [], "ok"), emb("out .pt", [], "refuse") | {"argv": [*E, "--out", str(w / "c.pt")]},
        emb("out folder", [], "refuse") | {"argv": [*E, "--out", str(w / "dir")]},
        emb("nan calibration", ["--normalization", "per-dim", "--calibration", "{nan_stats}"]),
        # run
        run("multi-line prompt (grid)", ["--prompt", "a\nb"], "ok", prompt=False),
        run("multi-line prompt with diagnostics", ["--prompt", "a\nb"], "ok", prompt=False, drop="--no-diagnostics"),
        run("undecodable prompt", ["--prompt", "a\udcffb"], prompt=False),
        run("blank prompt", ["--prompt", ""], prompt=False), run("special token prompt", ["--prompt", "<|im_end|>"],
                                                                 prompt=False),
        run("seeds 1,x", ["--seeds", "1,x"]), run("seeds 5-1", ["--seeds", "5-1"]),
        run("seeds 0-100000", ["--seeds", "0-100000"]), run("seeds -1", ["--seeds=-1"]),
        run("limit -1", ["--limit=-1"]), run("experiment nope", ["--experiment", "nope"]),
        run("experiment ../../etc/x", ["--experiment", "../../etc/x"]),
        run("experiment folder", ["--experiment", str(w / "dir")]),
        *[run(f"experiment {n}", ["--experiment", str(w / n)]) for n in
          ("exp_bad.toml", "exp_nan.toml", "exp_dup.toml", "exp_path.toml", "exp_long.toml", "exp_empty.toml",
           "exp_noconf.toml", "binary.toml", "big.toml")],
        run("experiment ok", ["--experiment", str(w / "exp_ok.toml")], "ok"),
        *[run(f"prompts-file {n}", ["--prompts-file", str(w / n)], "refuse", prompt=False) for n in
          ("prompts_empty.txt", "prompts_comments.txt", "prompts.toml", "prompts_bad.toml", "latin1.txt",
           "binary.toml", "missing.txt")],
        run("prompts-file ok", ["--prompts-file", str(w / "prompts_ok.txt")], "ok", prompt=False),
        run("prompts-file /dev/zero", ["--prompts-file", "/dev/zero"], prompt=False),
        run("prompts-file fifo", ["--prompts-file", str(w / "fifo")], prompt=False),
        run("output-dir is a file", ["--output-dir", str(w / "file")]),
        run("output-dir under a file", ["--output-dir", str(w / "file" / "o")]),
        run("output-dir read-only fs", ["--output-dir", "/tmp/vlbench-ro/o"],
            wrap="mkdir -p /tmp/vlbench-ro && unshare -m sh -c 'mount -t tmpfs -o size=1m,ro none /tmp/vlbench-ro && "
                 "exec {cmd}'", needs="unshare"),
        run("output-dir disk full", ["--output-dir", "/tmp/vlbench-full/o"],
            wrap="mkdir -p /tmp/vlbench-full && unshare -m sh -c 'mount -t tmpfs -o size=120k none /tmp/vlbench-full "
                 "&& exec {cmd}'", needs="unshare"),
        run("eval-set nope", ["--eval-set", "nope"]), run("eval-set /dev/zero", ["--eval-set", "/dev/zero"]),
        run("eval-set empty folder", ["--eval-set", str(w / "dir")]), run("metrics nope", ["--metrics", "nope"]),
        run("executor nope", ["--executor", "nope"]), run("ray-actors without ray", ["--ray-actors", "2"]),
        run("width 8192", ["--width", "8192", "--height", "8192"], "either"),
        # score
        dict(id="score not a folder", argv=["score", str(w / "file"), "--tiny", "--metrics", "clip_t"], expect="refuse"),
        dict(id="score empty folder", argv=["score", str(w / "dir"), "--tiny", "--metrics", "clip_t"], expect="refuse"),
        dict(id="score all-garbage results", argv=["score", "{garbage_run}", "--tiny", "--metrics", "clip_t"],
             expect="refuse"),
        dict(id="score damaged run", argv=["score", "{damaged_run}", "--tiny", "--metrics", "clip_t", "--no-store"],
             expect="refuse"),
        dict(id="score batch-size 0", argv=["score", "{damaged_run}", "--tiny", "--batch-size", "0"], expect="refuse"),
        dict(id="score metrics nope", argv=["score", "{damaged_run}", "--tiny", "--metrics", "nope"], expect="refuse"),
        # environments
        dict(id="workbench data dir under a file", argv=["--tiny"], expect="refuse",
             env={"VLBENCH_DATA_DIR": str(w / "file" / "data")}),
        dict(id="workbench data dir read-only", argv=["--tiny"], expect="refuse", env={"VLBENCH_DATA_DIR":
                                                                                      "/tmp/vlbench-ro"},
             wrap="mkdir -p /tmp/vlbench-ro && unshare -m sh -c 'mount -t tmpfs -o size=1m,ro none /tmp/vlbench-ro && "
                  "exec {cmd}'", needs="unshare"),
        dict(id="worker data dir under a file", argv=["worker", "--tiny"], expect="refuse",
             env={"VLBENCH_DATA_DIR": str(w / "file" / "data")}),
        dict(id="worker poll 0", argv=["worker", "--tiny", "--poll", "0"], expect="refuse"),
        dict(id="generate with a broken config.toml", argv=[*G, "--out", str(w / "out" / "cfg.png")],
             expect="refuse", env={"VLBENCH_CONFIG_DIR": str(w / "cfg_bad")}),
        dict(id="generate with nan in config.toml", argv=[*G, "--out", str(w / "out" / "cfgnan.png")],
             expect="refuse", env={"VLBENCH_CONFIG_DIR": str(w / "cfg_nan")}),
        dict(id="calibrate prompts-file /dev/zero", argv=["calibrate", *TINY, "--prompts-file", "/dev/zero"],
             expect="refuse"),
        dict(id="calibrate out folder", argv=["calibrate", *TINY, "--out", str(w / "dir")], expect="refuse"),
        dict(id="inspect missing", argv=["inspect", str(w / "missing.png")], expect="refuse"),
        dict(id="inspect corrupt", argv=["inspect", str(w / "corrupt.png")], expect="refuse"),
        dict(id="stats missing folder", argv=["stats", str(w / "missing")], expect="refuse"),
        dict(id="stats garbage results", argv=["stats", "{garbage_run}"], expect="refuse"),
        dict(id="diagnose missing image", argv=["diagnose", *TINY, "--image", str(w / "missing.png"), "--prompt", "p"],
             expect="refuse"),
        dict(id="no command flag", argv=["--nope"], expect="refuse"),
        dict(id="unknown command", argv=["fly"], expect="refuse"),
    ]
    for case in cases:
        if "drop" in case:
            drop = case.pop("drop")
            case["argv"] = [a for a in case["argv"] if a != drop]
    return cases


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)[:60]


def _bomb(path: Path) -> None:
    """A small PNG that claims 30000×30000 pixels (PIL's decompression-bomb guard must refuse it)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))


def _fixtures(w: Path, env: dict) -> dict:
    """Folders the score/stats cases read, and a calibration file with NaN statistics."""
    ref = w / "ref.png"
    damaged = w / "damaged-run"
    code, _, err, _ = vlbench(["run", "--experiment", "token_sweep", "--quick", *TINY, "--seeds", "1", *SMALL,
                               "--image", str(ref), "--prompt", "a cat", "--output-dir", str(damaged), "--no-store",
                               "--no-diagnostics"], env)
    assert code == 0, err[-2000:]
    rows, _ = results_rows(damaged)
    (damaged / rows[0]["image"]).write_bytes(b"")
    (damaged / rows[1]["image"]).unlink()
    with open(damaged / "results.jsonl", "a") as f:
        f.write("{garbled\n")
    garbage = w / "garbage-run"
    garbage.mkdir(exist_ok=True)
    shutil.copy(w / "results_garbage.jsonl", garbage / "results.jsonl")
    stats = w / "stats.safetensors"
    code, _, err, _ = vlbench(["calibrate", *TINY, "--out", str(stats)], env)
    assert code == 0, err[-2000:]
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(stats), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(stats))
    for key in tensors:
        if key.startswith("qwen3.") and key.endswith(".text.mean"):
            tensors[key] = tensors[key] * float("nan")
    save_file(tensors, str(w / "nan-stats.safetensors"), metadata=meta)
    return {"{damaged_run}": str(damaged), "{garbage_run}": str(garbage), "{nan_stats}": str(w / "nan-stats.safetensors")}


def check_output(case: dict) -> str | None:
    """Why an exit-0 result is wrong (None: it is right)."""
    kind, out = case.get("check"), case.get("out")
    if case["expect"] == "refuse":
        return "accepted an input that must be refused"
    if kind == "png" and out:
        try:
            import numpy as np
            from PIL import Image

            with Image.open(out) as img:
                pixels = np.asarray(img.convert("RGB"))
        except Exception as exc:  # noqa: BLE001
            return f"no readable image ({type(exc).__name__})"
        if pixels.std() == 0:
            return "a flat image (NaN latents decode to black)"
    if kind == "tensor" and out:
        try:
            import torch
            from safetensors.torch import load_file

            tensor = load_file(out)["prompt_embeds"]
        except Exception as exc:  # noqa: BLE001
            return f"no readable tensor ({type(exc).__name__})"
        if not bool(torch.isfinite(tensor).all()):
            return f"{int((~torch.isfinite(tensor)).sum())} non-finite values written"
    if kind == "run" and out:
        rows, bad = results_rows(Path(out))
        if not rows or bad:
            return "no results"
        if not (Path(out) / "grid.png").is_file() or not (Path(out) / "report.html").is_file():
            return "no grid or report"
    return None


def hostile_section(work: Path, log, limit: int | None = None) -> dict:
    w = work / "hostile"
    w.mkdir(parents=True, exist_ok=True)
    base_env = env_for(w / "data")
    cases = hostile_cases(w)
    subs = _fixtures(w, base_env)
    unshare = can_unshare()
    if limit is not None:
        cases = cases[:limit]
    results = []
    counts = {"ok": 0, "refused": 0, "tracebacks": 0, "hangs": 0, "silently_wrong": 0, "not_one_line": 0,
              "skipped": 0}
    for i, case in enumerate(cases):
        argv = [subs.get(a, a) for a in case["argv"]]
        if case.get("needs") == "unshare" and not unshare:
            counts["skipped"] += 1
            results.append({"id": case["id"], "outcome": "skipped (no unshare)"})
            continue
        env = dict(base_env, **case.get("env", {}))
        if case.get("check") and case.get("out"):
            p = Path(case["out"])
            shutil.rmtree(p) if p.is_dir() and case["check"] == "run" else p.unlink(missing_ok=True)
        code, out, err, seconds = vlbench(argv, env, timeout=240, cwd=w, wrap=case.get("wrap"))
        why = None
        if code == "hang":
            outcome = "hang"
            counts["hangs"] += 1
        elif traceback_in(out, err):
            outcome = "traceback"
            counts["tracebacks"] += 1
        elif code == 0:
            why = check_output(case)
            outcome = "silently wrong" if why else "ok"
            counts["silently_wrong" if why else "ok"] += 1
        elif one_error_line(code, err) or case["id"].startswith("run ") and code == 1 and not traceback_in(err):
            outcome = "refused"
            counts["refused"] += 1
            if case["expect"] == "ok":
                why = "refused an input that must work"
                outcome = "wrongly refused"
                counts["refused"] -= 1
                counts["silently_wrong"] += 1
        else:
            outcome = "not one line"
            counts["not_one_line"] += 1
        last = [ln for ln in err.splitlines() if ln.strip()][-1:] if err.strip() else []
        results.append({"id": case["id"], "expect": case["expect"], "exit": code, "outcome": outcome,
                        "seconds": round(seconds, 2), "last_line": last[0][:300] if last else "",
                        **({"why": why} if why else {})})
        log(f"hostile {i + 1:3d}/{len(cases)} {case['id']:50s} {outcome:15s} {str(code):>4} {last[0][:110] if last else ''}")
    return {"cases": len(cases), "counts": counts, "results": results}


# ---------------------------------------------------------------- store faults
def store_section(work: Path, log) -> dict:
    ref = make_image(work / "ref.png")
    out_cases = {}
    unshare = can_unshare()

    def run_case(name: str, seeds: str, fault, wrap: str | None = None, data: Path | None = None):
        data = data or work / f"store-{name}-data"
        out = work / f"store-{name}"
        env = env_for(data)
        stop = threading.Event()
        thread = threading.Thread(target=fault, args=(data, out, stop), daemon=True) if fault else None
        if thread:
            thread.start()
        code, _, err, seconds = vlbench(run_argv(ref, out, seeds) + ["--no-diagnostics"], env, timeout=600, wrap=wrap)
        stop.set()
        if thread:
            thread.join(60)
        return code, err, seconds, out, data

    def verdict(name, code, err, out, data, resumed=None):
        rows, torn = results_rows(out)
        done = {str((out / r["image"]).resolve()): r["image_sha256"] for r in rows if r["status"] == "done"}
        history = store_rows(data, out)
        paths = [p for p, _ in history]
        store_lines = [ln for ln in err.splitlines() if "run store" in ln]
        result = {"exit": code, "traceback": traceback_in(err), "folder_rows": len(rows), "torn": torn,
                  "store_rows": len(history), "store_lost": len(set(done) - set(paths)),
                  "store_duplicated": len(paths) - len(set(paths)), "store_lines": store_lines[:3]}
        if resumed is not None:
            result["resume_exit"] = resumed
        out_cases[name] = result
        log(f"store {name:40s} exit {code} rows {len(rows)} store {len(history)} lost {result['store_lost']} "
            f"dup {result['store_duplicated']} lines {len(store_lines)}")

    # 1. locked past the busy timeout: another process holds the write lock for 12 s from the first image on
    def hold_lock(data, out, stop):
        db = data / "runs.sqlite3"
        while not (out / "results.jsonl").exists() and not stop.is_set():
            time.sleep(0.05)
        conn = sqlite3.connect(db, timeout=30, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        stop.wait(12)
        conn.execute("ROLLBACK")
        conn.close()

    code, err, _, out, data = run_case("locked 12 s", "0-5", hold_lock)
    time.sleep(1)
    resumed, _, _, _ = vlbench(run_argv(ref, out, "0-5") + ["--no-diagnostics"], env_for(data), timeout=600)
    verdict("run: store locked 12 s, then resumed", code, err, out, data, resumed)

    # 2. deleted during the run
    def delete(data, out, stop):
        while not stop.is_set():
            rows, _ = results_rows(out)
            if len(rows) >= 5:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{data / 'runs.sqlite3'}{suffix}").unlink(missing_ok=True)
                return
            time.sleep(0.02)

    code, err, _, out, data = run_case("deleted", "0-5", delete)
    verdict("run: store deleted mid-run", code, err, out, data)

    if unshare:
        # 3. disk full, then space freed and the run resumed: in one private mount namespace
        for name, setup, heal in [
            ("disk full", 'mount -t tmpfs -o size=8m none "$D" && {first} && dd if=/dev/zero of="$D/filler" bs=4k '
                          "2>/dev/null; ", 'rm -f "$D/filler"'),
            ("read-only", 'mount -t tmpfs -o size=4m none "$D" && {first} && mount -o remount,ro "$D"; ',
             'mount -o remount,rw "$D"'),
        ]:
            data = work / f"store-{name}-data"
            out = work / f"store-{name}"
            data.mkdir(parents=True, exist_ok=True)
            import shlex

            env = env_for(data)
            first = " ".join(shlex.quote(a) for a in [PY, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                                                      "from vlbench.store import Store; Store().close()", str(SRC)])
            run_cmd = " ".join(shlex.quote(a) for a in [PY, "-m", "vlbench", *run_argv(ref, out, "0-5"),
                                                        "--no-diagnostics"])
            script = (f"D={shlex.quote(str(data))}; " + setup.format(first=first)
                      + f'{run_cmd} 2>"$D.err1"; echo $? > "$D.code1"; {heal}; {run_cmd} 2>"$D.err2"; '
                        f'echo $? > "$D.code2"; {PY} -c {shlex.quote(_DUMP)} "$D/runs.sqlite3" '
                        f'{shlex.quote(str(out.resolve()))} > "$D.rows"')
            subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, timeout=900)
            err1 = Path(f"{data}.err1").read_text(errors="replace")
            err2 = Path(f"{data}.err2").read_text(errors="replace")
            rows, torn = results_rows(out)
            history = json.loads(Path(f"{data}.rows").read_text() or "[]")
            done = {str((out / r["image"]).resolve()) for r in rows if r["status"] == "done"}
            paths = [p for p, _ in history]
            result = {"exit": int(Path(f"{data}.code1").read_text()), "traceback": traceback_in(err1, err2),
                      "folder_rows": len(rows), "torn": torn, "resume_exit": int(Path(f"{data}.code2").read_text()),
                      "store_rows_after_resume": len(history), "store_lost": len(done - set(paths)),
                      "store_duplicated": len(paths) - len(set(paths)),
                      "store_lines": [ln for ln in err1.splitlines() if "run store" in ln or "history" in ln][:3]}
            out_cases[f"run: store {name}, then fixed and resumed"] = result
            log(f"store run: {name:30s} exit {result['exit']} → resume {result['resume_exit']} rows {len(rows)} "
                f"store {len(history)} lost {result['store_lost']} dup {result['store_duplicated']}")
    else:
        out_cases["run: disk full / read-only"] = "skipped (no unshare)"

    out_cases.update(worker_store_faults(work, ref, log, unshare))
    return out_cases


_DUMP = ("import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
         "print(json.dumps([list(r) for r in c.execute('SELECT image, image_sha256 FROM runs WHERE image LIKE ?', "
         "(sys.argv[2] + '/%',))]))")


def worker_store_faults(work: Path, ref: Path, log, unshare: bool) -> dict:
    """The headless worker with a queue of 20: the store write-locked for 30 s right after a job finished (the
    campaign: a finished job marked failed); a full disk (images and store) freed later."""
    from vlbench.store import Store

    results = {}
    data = work / "worker-locked-data"
    env = env_for(data)
    store = Store(data / "runs.sqlite3")
    store.enqueue_many([dict(prompt=f"job {i}", images=[str(ref)], recipe={"width": 64, "height": 64, "steps": 4,
                                                                           "seed": i}) for i in range(20)])
    proc = subprocess.Popen([PY, "-m", "vlbench", "worker", *TINY, "--exit-when-idle"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    while store.counts_by_status()["done"] < 3 and proc.poll() is None:
        time.sleep(0.01)
    conn = sqlite3.connect(data / "runs.sqlite3", timeout=30, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    time.sleep(30)
    conn.execute("ROLLBACK")
    conn.close()
    code = proc.wait(timeout=600)
    counts = store.counts_by_status()
    results["worker: store locked 30 s after a job"] = {"exit": code, "counts": counts,
                                                       "traceback": traceback_in(proc.stderr.read().decode())}
    log(f"store worker locked 30 s: exit {code} {counts}")
    store.close()
    if not unshare:
        results["worker: disk full"] = "skipped (no unshare)"
        return results
    import shlex

    data = work / "worker-full-data"
    data.mkdir(parents=True, exist_ok=True)
    driver = f"""
import json, os, subprocess, sys, time
sys.path.insert(0, {str(SRC)!r})
from vlbench.store import Store
data = {str(data)!r}
store = Store(data + "/runs.sqlite3")
store.enqueue_many([dict(prompt=f"job {{i}}", images=[{str(ref)!r}], recipe={{"width": 64, "height": 64, "steps": 4,
                                                                            "seed": i}}) for i in range(20)])
proc = subprocess.Popen([{PY!r}, "-m", "vlbench", "worker", "--tiny", "--device", "cpu", "--exit-when-idle"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
while store.counts_by_status()["done"] < 3:
    time.sleep(0.01)
subprocess.run(["sh", "-c", "dd if=/dev/zero of=" + data + "/filler bs=4k 2>/dev/null"])
time.sleep(20)
full = store.counts_by_status()
os.unlink(data + "/filler")  # space freed: the worker goes on by itself
code = proc.wait(timeout=600)
print(json.dumps({{"exit": code, "while_full": full, "counts": store.counts_by_status(),
                  "traceback": "Traceback" in proc.stderr.read().decode()}}))
"""
    proc = subprocess.run(["unshare", "-m", "sh", "-c",
                           f"mount -t tmpfs -o size=1500k none {shlex.quote(str(data))} && exec {shlex.quote(PY)} -c "
                           f"{shlex.quote(driver)}"], env=env_for(data), capture_output=True, text=True, timeout=900)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {"error": (proc.stderr or proc.stdout)[-1500:]}
    results["worker: disk full after 3 jobs, then freed"] = result
    log(f"store worker disk full: {result}")
    return results


# ---------------------------------------------------------------- SSH drop
def ssh_section(work: Path, log) -> dict:
    from vlbench.store import Store

    ref = make_image(work / "ref.png")
    out = {}
    if shutil.which("setsid") is None:
        return {"skipped": "no setsid"}
    for mode in ("setsid", "plain &", "nohup"):
        data = work / f"ssh-{mode.split()[0]}"
        env = env_for(data)
        store = Store(data / "runs.sqlite3")
        store.enqueue_many([dict(prompt=f"job {i}", images=[str(ref)], recipe={"width": 64, "height": 64, "steps": 6,
                                                                               "seed": i}) for i in range(40)])
        master, slave = os.openpty()
        data.mkdir(parents=True, exist_ok=True)
        shell = subprocess.Popen(["setsid", "-c", "bash", "--norc", "--noprofile", "-i"], stdin=slave, stdout=slave,
                                 stderr=slave, env=env, close_fds=True, cwd=data)  # nohup.out lands there
        os.close(slave)
        prefix = {"setsid": "setsid ", "plain &": "", "nohup": "nohup "}[mode]
        os.write(master, f"{prefix}{PY} -m vlbench worker --tiny --device cpu --exit-when-idle &\n".encode())
        deadline = time.monotonic() + 180
        while store.counts_by_status()["done"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        info = store.get_state("worker") or {}
        done_at_drop = store.counts_by_status()["done"]
        os.close(master)  # the connection drops
        shell.wait(timeout=30)
        deadline = time.monotonic() + 300
        pid = info.get("pid")
        while time.monotonic() < deadline:
            counts = store.counts_by_status()
            alive = pid is not None and Path(f"/proc/{pid}").exists()
            if counts["done"] == 40 and not alive:
                break
            time.sleep(0.2)
        counts = store.counts_by_status()
        out[mode] = {"done_when_terminal_closed": done_at_drop, "counts": counts,
                     "shell_exit": shell.returncode, "worker_exited": not (pid and Path(f"/proc/{pid}").exists())}
        log(f"ssh {mode:8s} done at drop {done_at_drop} → {counts}")
        store.close()
    return out


# ---------------------------------------------------------------- Ray
def ray_section(work: Path, log) -> dict:
    code = r"""
import ipaddress, json, os, sys, threading
sys.path.insert(0, sys.argv[1])
import psutil
from vlbench.cli import main
seen, done = {}, threading.Event()
def watch():
    while not done.is_set():
        me = psutil.Process()
        pids = {me.pid, *(p.pid for p in me.children(recursive=True))}
        for c in psutil.net_connections("inet"):
            if c.status == psutil.CONN_LISTEN and c.pid in pids:
                seen[f"{c.laddr.ip}:{c.laddr.port}"] = c.pid
        done.wait(0.2)
t = threading.Thread(target=watch); t.start()
rc = main(sys.argv[2:])
done.set(); t.join()
exposed = [a for a in seen if not ipaddress.ip_address(a.rsplit(":", 1)[0].removeprefix("::ffff:")).is_loopback]
print(json.dumps({"exit": rc, "listeners": len(seen), "non_loopback": exposed}))
"""
    ref = make_image(work / "ref.png")
    argv = ["run", "--experiment", "token_sweep", "--quick", *TINY, *SMALL, "--seeds", "1,2", "--image", str(ref),
            "--prompt", PROMPT, "--output-dir", str(work / "ray"), "--no-store", "--no-diagnostics", "--executor",
            "ray", "--ray-actors", "2"]
    proc = subprocess.run([PY, "-c", code, str(SRC), *argv], env=env_for(work / "ray-data"), capture_output=True,
                          text=True, timeout=900)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {"error": proc.stderr[-1500:]}
    log(f"ray: {result}")
    return result



# ---------------------------------------------------------------- issue 26: nothing wrong, silently
_STARTER = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, os.environ["CAMPAIGN_SRC"])
import vlbench.cli, vlbench.cli.worker, vlbench.worker, vlbench.store
parser = vlbench.cli.build_parser()
vlbench.cli.build_parser = lambda: parser
ready, barrier = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not barrier.exists():
    time.sleep(0.001)
sys.exit(vlbench.cli.main(sys.argv[3:]))
"""

_ZERO_TTY = r"""
import fcntl, os, pty, select, struct, subprocess, sys, termios, time
master, slave = pty.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
env["TERM"] = "xterm-256color"
p = subprocess.Popen([sys.executable, "-m", "vlbench", "tui", "--tiny"], stdin=slave, stdout=slave, stderr=slave,
                     env=env, close_fds=True, start_new_session=True)
os.close(slave)
out = b""
def pump(seconds, until=None):
    global out
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (until and until in out) and p.poll() is None:
        if select.select([master], [], [], 0.1)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            out += data
pump(120, b"Parameters")
drawn = b"Parameters" in out
os.write(master, b"\x11")
pump(30)
try:
    code = p.wait(timeout=30)
except subprocess.TimeoutExpired:
    p.kill(); code = "hang"
text = out.decode(errors="replace")
print(repr((code, drawn, "Traceback" in text)))
"""


def _sideways(path: Path, orientation: int, fmt: str = "JPEG") -> tuple[int, int]:
    """An asymmetric 96×64 picture stored as a camera would for `orientation`; returns the upright size."""
    import numpy as np
    from PIL import Image

    a = np.zeros((64, 96, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, 96, dtype=np.uint8)[None, :]
    a[:16, :16] = (255, 255, 0)
    upright = Image.fromarray(a)
    inverse = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
               2: Image.Transpose.FLIP_LEFT_RIGHT}
    stored = upright.transpose(inverse[orientation]) if orientation in inverse else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, format=fmt, exif=exif)
    return upright.size


def _deep_toml(depth: int, kind: str) -> str:
    if kind == "array":
        return "alpha = " + "[" * depth + "]" * depth + "\n"
    return "".join(f"[{'.'.join(['t'] * (i + 1))}]\n" for i in range(0, depth, max(1, depth // 2000))) + "x = 1\n"


SILENT_CLASSES = ("workers", "files", "nested", "before-load", "full-disk", "permissions", "tty", "exif", "bit-depth")


def silent_section(work: Path, log, workers: int = 20, into: dict | None = None,
                   classes: tuple[str, ...] = SILENT_CLASSES) -> dict:
    """Issue 26's classes: EXIF orientation, bit depth, FIFO/device/huge/folder for every file flag, nested TOML,
    a full disk under the data folder, a 0×0 terminal, text lengths and layers refused before loading, `workers`
    simultaneous worker starts, permissions. Each case: ok (and right), refused in one line, or counted as a
    traceback, a hang, silently wrong, or not one line."""
    import numpy as np
    from PIL import Image

    w = work / "silent"
    w.mkdir(parents=True, exist_ok=True)
    env = env_for(w / "data")
    results: list[dict] = []
    simultaneous: dict = {}
    modes: dict = {}
    fifo, huge, ref, space, flags = w / "fifo", w / "huge.toml", make_image(w / "ref.png"), w / "space.toml", []
    counts = {"ok": 0, "refused": 0, "tracebacks": 0, "hangs": 0, "silently_wrong": 0, "not_one_line": 0}
    if into is not None:  # filled as cases finish: an interrupted campaign still writes what it measured
        into.update(counts=counts, results=results, interrupted=True)

    def judge(cls: str, case: str, code, out: str, err: str, seconds: float, expect: str, why: str | None = None):
        if code == "hang":
            outcome = "hang"
        elif traceback_in(out, err):
            outcome = "traceback"
        elif code == 0:
            outcome = "silently wrong" if (why or expect == "refuse") else "ok"
            why = why or ("accepted an input that must be refused" if expect == "refuse" else None)
        elif one_error_line(code, err):
            outcome = "wrongly refused" if expect == "ok" else "refused"
        else:
            outcome = "not one line"
        key = {"ok": "ok", "refused": "refused", "hang": "hangs", "traceback": "tracebacks",
               "silently wrong": "silently_wrong", "wrongly refused": "silently_wrong",
               "not one line": "not_one_line"}[outcome]
        counts[key] += 1
        last = [ln for ln in err.splitlines() if ln.strip()][-1:] or [""]
        results.append({"class": cls, "id": case, "expect": expect, "exit": code, "outcome": outcome,
                        "seconds": round(seconds, 2), "last_line": last[0][:300], **({"why": why} if why else {})})
        log(f"silent {cls:12s} {case:48s} {outcome:15s} {str(code):>4} {last[0][:100]}")

    def embed(image: Path, name: str):
        out = w / f"{name}.safetensors"
        code, so, se, sec = vlbench(["embed", *TINY, "--image", str(image), "--prompt", PROMPT, "--alpha", "1",
                                     "--tokens", "image", "--out", str(out)], env, timeout=240)
        side = json.loads(out.with_suffix(".json").read_text()) if code == 0 and out.with_suffix(".json").is_file() else {}
        return code, so, se, sec, side.get("conditioning", {})

    if "exif" in classes:
        # -- EXIF orientation: the VL reads the image upright, source_sizes says the upright size, the record says so
        for orientation in (1, 3, 6, 8):
            path = w / f"exif{orientation}.jpg"
            size = _sideways(path, orientation)
            code, so, se, sec, cond = embed(path, f"exif{orientation}")
            why = None
            if code == 0:
                got = [tuple(s) for s in (cond.get("vl") or {}).get("source_sizes", [])]
                said = any("per EXIF" in x for x in cond.get("warnings", []))
                if got != [size]:
                    why = f"source_sizes {got}, upright {size}"
                elif said != (orientation != 1):
                    why = "the record does not say how the image was turned" if said is False else "a note for an upright image"
            judge("exif", f"embed orientation {orientation}", code, so, se, sec, "ok", why)

    if "bit-depth" in classes:
        # -- bit depth: converted from the nominal range (levels kept, never binarised, never stretched)
        sys.path.insert(0, str(SRC))
        from vlbench.engine.extract import load_reference

        grad16 = np.rint(np.linspace(0, 65535, 4 * 256)).reshape(4, 256).astype(np.uint16)
        dark16 = np.rint(np.linspace(0, 1000, 4 * 256)).reshape(4, 256).astype(np.uint16)
        fgrad = np.linspace(0, 1, 4 * 256, dtype=np.float32).reshape(4, 256)
        fwide = np.linspace(-0.5, 1.5, 4 * 256, dtype=np.float32).reshape(4, 256)
        fnan = fgrad.copy()
        fnan[0, 0] = np.nan
        depth_cases = [("16-bit PNG gradient", "g16.png", grad16, "ok", np.rint(grad16 / 257.0)),
                       ("16-bit TIFF gradient", "g16.tif", grad16, "ok", np.rint(grad16 / 257.0)),
                       ("16-bit PNG, dark (0-1000)", "d16.png", dark16, "ok", np.rint(dark16 / 257.0)),
                       ("float TIFF in [0, 1]", "f.tif", fgrad, "ok", np.rint(fgrad * 255)),
                       ("float TIFF in [-0.5, 1.5]", "fw.tif", fwide, "ok", np.rint(np.clip(fwide, 0, 1) * 255)),
                       ("float TIFF with NaN", "fnan.tif", fnan, "refuse", None),
                       ("32-bit integer TIFF", "i32.tif", (grad16.astype(np.int32) * 1000), "refuse", None)]
        for name, file, data, expect, nominal in depth_cases:
            Image.fromarray(data).save(w / file)
            code, so, se, sec, cond = embed(w / file, _slug(name))
            why = None
            if code == 0 and nominal is not None:
                got = np.asarray(load_reference(w / file)[0])[..., 0].astype(float)
                if len(np.unique(got)) <= 2 and len(np.unique(nominal)) > 2:
                    why = f"reduced to {len(np.unique(got))} values"
                elif np.abs(got - nominal).max() > 1:
                    why = f"off the nominal range by {np.abs(got - nominal).max():.0f} levels (stretched?)"
                elif not any("read as 8-bit" in x for x in cond.get("warnings", [])):
                    why = "the record does not say how it was read"
            judge("bit depth", name, code, so, se, sec, expect, why)
        (w / "pgm16.pgm").write_bytes(b"P5\n4 1\n65535\n" + np.array([0, 257, 32896, 65535], ">u2").tobytes())
        code, so, se, sec, cond = embed(w / "pgm16.pgm", "pgm16")
        got = np.asarray(load_reference(w / "pgm16.pgm")[0])[0, :, 0].tolist() if code == 0 else None
        judge("bit depth", "16-bit PGM (PIL mode I)", code, so, se, sec, "ok",
              None if code != 0 or got == [0, 1, 128, 255] else f"levels {got}")

    if "files" in classes:
        # -- FIFO, device, huge file and folder for every file flag: refused in one line, never a hang
        fifo = w / "fifo"
        if not fifo.exists():
            os.mkfifo(fifo)
        huge = w / "huge.toml"
        huge.write_bytes(b"# " + b"x" * (17 * 2**20) + b"\n")
        (w / "folder").mkdir(exist_ok=True)
        ref = make_image(w / "ref.png")
        space = w / "space.toml"
        space.write_text('name = "s"\nobjectives = ["siglip"]\n[fixed]\nsteps = 2\nwidth = 64\nheight = 64\n'
                         '[space]\nalpha = { low = 0.2, high = 0.9 }\n')
        flags = [
            ("generate --recipe", lambda v: ["generate", *TINY, *SMALL, "--prompt", PROMPT, "--recipe", v,
                                             "--out", str(w / "x.png")]),
            ("generate --image", lambda v: ["generate", *TINY, *SMALL, "--prompt", PROMPT, "--image", v,
                                            "--out", str(w / "x.png")]),
            ("embed --image", lambda v: ["embed", *TINY, "--prompt", PROMPT, "--image", v, "--out", str(w / "x.safetensors")]),
            ("run --experiment", lambda v: ["run", *TINY, *SMALL, "--experiment", v, "--image", str(ref), "--prompt", PROMPT,
                                            "--output-dir", str(w / "run-x"), "--no-store"]),
            ("run --prompts-file", lambda v: ["run", *TINY, *SMALL, "--experiment", "vl_only_vs_qwen3", "--image", str(ref),
                                              "--prompts-file", v, "--output-dir", str(w / "run-y"), "--no-store"]),
            ("run --eval-set", lambda v: ["run", *TINY, *SMALL, "--experiment", "vl_only_vs_qwen3", "--eval-set", v,
                                          "--output-dir", str(w / "run-z"), "--no-store"]),
            ("search --space", lambda v: ["search", *TINY, "--space", v, "--image", str(ref), "--prompt", PROMPT,
                                          "--output-dir", str(w / "search-x"), "--trials", "1"]),
            ("search --prompts-file", lambda v: ["search", *TINY, "--space", str(space), "--image", str(ref),
                                                 "--prompts-file", v, "--output-dir", str(w / "search-y"), "--trials", "1"]),
            ("calibrate --prompts-file", lambda v: ["calibrate", *TINY, "--prompts-file", v, "--out",
                                                    str(w / "c.safetensors")]),
        ]
        for flag, argv in flags:
            for kind, value in (("FIFO", str(fifo)), ("/dev/zero", "/dev/zero"), ("17 MB file", str(huge)),
                                ("folder", str(w / "folder"))):
                if flag == "run --eval-set" and kind == "folder":
                    continue  # an eval set is a folder: an empty one is its own case below
                code, so, se, sec = vlbench(argv(value), env, timeout=90)
                judge("files", f"{flag} {kind}", code, so, se, sec, "refuse")
        code, so, se, sec = vlbench(flags[5][1](str(w / "folder")), env, timeout=90)
        judge("files", "run --eval-set empty folder", code, so, se, sec, "refuse")

    if "nested" in classes:
        # -- nested TOML (recipe, experiment, search space)
        for kind in ("array", "table"):
            deep = w / f"deep-{kind}.toml"
            deep.write_text(_deep_toml(100_000, kind))
            for flag in ("generate --recipe", "run --experiment", "search --space"):
                argv = next(a for f, a in flags if f == flag)
                code, so, se, sec = vlbench(argv(str(deep)), env, timeout=90)
                judge("nested toml", f"{flag} 100000-deep {kind}", code, so, se, sec, "refuse")

    if "before-load" in classes:
        # -- text lengths and layers: refused before any model loads
        big = w / "negative.toml"
        big.write_text('guidance = 2.0\nnegative_prompt = "' + "blurry " * 1_500_000 + '"\n')
        for name, extra in (("10 MB negative_prompt", ["--recipe", str(big)]), ("layer 99", ["--layer", "99"]),
                            ("image_layer -99", ["--image-layer", "-99", "--image", str(ref)])):
            code, so, se, sec = vlbench(["generate", *TINY, *SMALL, "--prompt", PROMPT, "--alpha", "0.5", *extra,
                                         "--out", str(w / "x.png")], env, timeout=120)
            loaded = any(t in so + se for t in ("loading Z-Image", "loading Qwen3-VL from", "loading Qwen3-4B"))
            why = "refused only after the models loaded" if code != 0 and loaded else None
            judge("before load", name, code, so, se, sec, "refuse", why)

    if "full-disk" in classes:
        # -- a full disk under the data folder: the log on a full device, then (namespace allowing) the whole folder
        full = w / "full-data"
        full.mkdir(exist_ok=True)
        (full / "vlbench.log").unlink(missing_ok=True)
        (full / "vlbench.log").symlink_to("/dev/full")
        code, so, se, sec = vlbench(["worker", *TINY, "--exit-when-idle"], env_for(full), timeout=120)
        judge("full disk", "worker, log on a full disk", code, so, se, sec, "ok")
        if can_unshare():
            import shlex

            d = w / "tmpfs-data"
            d.mkdir(exist_ok=True)
            for name, argv in (("worker start on a full data folder", ["worker", *TINY, "--exit-when-idle"]),
                               ("run into a full data folder", run_argv(ref, d / "out", "0") + ["--no-diagnostics"])):
                cmd = " ".join(shlex.quote(a) for a in [PY, "-m", "vlbench", *argv])
                script = (f'D={shlex.quote(str(d))}; mount -t tmpfs -o size=1m none "$D" && '
                          f'{shlex.quote(PY)} -c "import sys; sys.path.insert(0, sys.argv[1]); from vlbench.store import '
                          f'Store; Store().close()" {shlex.quote(str(SRC))} && dd if=/dev/zero of="$D/filler" bs=4k '
                          f'2>/dev/null; {cmd}')
                start = time.monotonic()
                try:
                    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env_for(d), capture_output=True,
                                          text=True, errors="replace", timeout=240)
                    code, so, se = proc.returncode, proc.stdout, proc.stderr
                except subprocess.TimeoutExpired as exc:
                    code, so, se = "hang", exc.stdout or "", exc.stderr or ""
                judge("full disk", name, code, so if isinstance(so, str) else "", se if isinstance(se, str) else "",
                      time.monotonic() - start, "refuse")

    if "tty" in classes:
        # -- a terminal that reports 0×0
        start = time.monotonic()
        proc = subprocess.run([PY, "-c", _ZERO_TTY], env=dict(env, VLBENCH_CONFIG_DIR=str(w / "tui-config")),
                              capture_output=True, text=True, timeout=300)
        try:
            code, drawn, tb = eval(proc.stdout.strip().splitlines()[-1])  # noqa: S307 — our own repr
        except Exception:  # noqa: BLE001
            code, drawn, tb = "no result", False, True
        judge("0x0 terminal", "vlbench tui, then ctrl+q", code, "Traceback (most recent call last)" if tb else "", "",
              time.monotonic() - start, "ok", None if drawn else "nothing drawn")

    if "workers" in classes:
        # -- simultaneous worker starts: exactly one runs the queue
        wk = w / "workers"
        wk.mkdir(exist_ok=True)
        wenv = dict(env_for(wk / "data"), CAMPAIGN_SRC=str(SRC))
        errs = [wk / f"err{i}" for i in range(workers)]
        procs = [subprocess.Popen([PY, "-c", _STARTER, str(wk / f"ready{i}"), str(wk / "go"), "worker", *TINY],
                                  env=wenv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=e.open("wb"))
                 for i, e in enumerate(errs)]
        start = time.monotonic()
        try:
            while not all((wk / f"ready{i}").exists() for i in range(workers)) and time.monotonic() - start < 300:
                time.sleep(0.05)
            (wk / "go").touch()
            released = time.monotonic()
            while time.monotonic() - released < 120 and not all(
                    p.poll() is not None or "runs the queue" in e.read_text(errors="replace") for p, e in zip(procs, errs)):
                time.sleep(0.05)
            time.sleep(1.0)
            running = [p for p, e in zip(procs, errs) if "runs the queue" in e.read_text(errors="replace")]
            refused = [p for p, e in zip(procs, errs) if p.poll() == 2 and one_error_line(2, e.read_text(errors="replace"))
                       and "already runs this queue" in e.read_text(errors="replace")]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
        simultaneous = {"started": workers, "ran_the_queue": len(running), "refused_in_one_line": len(refused),
                        "double_owned": int(len(running) > 1), "seconds": round(time.monotonic() - start, 1)}
        log(f"silent workers: {simultaneous}")

    if "permissions" in classes:
        # -- permissions: what a worker and a generate leave in a fresh data folder, under umask 022
        pdata = w / "perm-data"
        code, so, se, sec = vlbench(["worker", *TINY, "--exit-when-idle"], env_for(pdata), timeout=120,
                                    wrap="umask 022; {cmd}")
        modes = {str(p.relative_to(pdata)) or ".": oct(p.stat().st_mode & 0o777)
                 for p in [pdata, *pdata.iterdir()] if not p.is_symlink()}
        wide = [k for k in (".", "runs.sqlite3", "vlbench.log") if k in modes and int(modes[k], 8) & 0o077]
        judge("permissions", "data folder after a worker (umask 022)", code, so, se, sec, "ok",
              f"readable by others: {wide}" if wide else None)
        sdata = w / "shared-data"
        code, so, se, sec = vlbench(["worker", *TINY, "--exit-when-idle"], env_for(sdata, VLBENCH_SHARED_DATA="1"),
                                    timeout=120, wrap="umask 002; {cmd}")
        shared_mode = oct((sdata / "runs.sqlite3").stat().st_mode & 0o777) if (sdata / "runs.sqlite3").exists() else None
        judge("permissions", "VLBENCH_SHARED_DATA=1 (umask 002)", code, so, se, sec, "ok",
              None if shared_mode == "0o664" else f"store {shared_mode}, expected 0o664")
    out = {"cases": len(results), "counts": counts, "simultaneous_workers": simultaneous,
           "permission_modes": modes, "results": results}
    if into is not None:
        into.clear()
        into.update(out)
    return out


# ---------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default="kill,hostile,store,ssh,ray,silent")
    p.add_argument("--workers", type=int, default=20, help="silent: simultaneous `vlbench worker` starts (default 20)")
    p.add_argument("--silent-classes", default=",".join(SILENT_CLASSES), help="silent: the classes to run")
    p.add_argument("--trials", type=int, default=15, help="kill -9 trials (default 15)")
    p.add_argument("--seeds", default="0-9", help="seeds of the killed run: token_sweep's 6 configs × these "
                                                  "(default 0-9: 60 images, so row 60 is the last)")
    p.add_argument("--hostile-limit", type=int, help="only the first N hostile inputs")
    p.add_argument("--quick", action="store_true", help="the small version: 4 seeds (20 images)")
    p.add_argument("--seed", type=int, default=13, help="random moments of the kill trials")
    p.add_argument("--out", help="write the results here (JSON)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = p.parse_args()
    seeds = "0-3" if args.quick else args.seeds
    work = Path(tempfile.mkdtemp(prefix="vlbench-reliability-"))
    lines: list[str] = []

    def log(text: str) -> None:
        lines.append(text)
        print(text, flush=True)

    import platform

    import torch

    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "python": platform.python_version(), "torch": torch.__version__,
              "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                       text=True).stdout.strip(),
              "dirty": bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"],
                                           capture_output=True, text=True).stdout.strip())}
    rng = random.Random(args.seed)
    started = time.monotonic()
    try:
        for section in args.sections.split(","):
            t0 = time.monotonic()
            if section == "kill":
                report["kill"] = kill_section(work / "kill", args.trials, seeds, rng, log)
            elif section == "hostile":
                report["hostile"] = hostile_section(work, log, args.hostile_limit)
            elif section == "store":
                report["store"] = store_section(work / "store", log)
            elif section == "ssh":
                report["ssh"] = ssh_section(work / "ssh", log)
            elif section == "ray":
                report["ray"] = ray_section(work / "ray", log)
            elif section == "silent":
                report["silent"] = silent_section(work, log, args.workers, into=report.setdefault("silent", {}),
                                                  classes=tuple(args.silent_classes.split(",")))
            else:
                raise SystemExit(f"unknown section {section!r}")
            report.setdefault("seconds", {})[section] = round(time.monotonic() - t0, 1)
    finally:
        report["total_seconds"] = round(time.monotonic() - started, 1)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
            Path(args.out).with_suffix(".log").write_text("\n".join(lines) + "\n")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v.get("totals", v.get("counts")) if isinstance(v, dict) and ("totals" in v or "counts" in v)
                      else None for k, v in report.items() if k in ("kill", "hostile", "silent")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
