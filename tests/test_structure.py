"""Issue 24: the layout's rules, checked on the syntax tree of src/vlbench (never by searching the text).

(a) Imports: the layers are written once, in docs/design.md's import-layers table; this file parses that table,
    so the document and the test cannot drift. (b) No module writes a file except through files.atomic_write
    (ALLOWED_WRITES: what is not atomic by design, each with its reason). (c) No module reads an input file
    except through vlbench.files' guarded readers (ALLOWED_READS, likewise).

Each checker runs on a source tree (a folder holding `vlbench/`), so each is also shown to fail: the planted tests
copy the real tree into tmp_path, add one small module that breaks the rule, and see the checker name it.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DESIGN = ROOT / "docs" / "design.md"

# Third-party packages that are (or import) torch: a torch-free module imports none of them at module level.
TORCH = ("torch", "torchvision", "transformers", "diffusers", "accelerate", "safetensors.torch", "torchao")


# ---------------------------------------------------------------- reading a source tree
@dataclass(frozen=True)
class Import:
    target: str  # the module imported (a vlbench submodule when `from vlbench.x import y` names one)
    line: int
    module_level: bool  # runs when the module is imported (not inside a function; TYPE_CHECKING blocks skipped)
    guarded: bool = False  # inside `try: … except ImportError` (an optional package or a platform's module)


@dataclass(frozen=True, eq=False)
class Module:
    name: str
    path: Path
    tree: ast.Module
    is_package: bool


def parse_module(root: Path, path: Path) -> Module:
    """The module at `path` (a file under root/vlbench), named as Python imports it."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    name = ".".join(parts[:-1] if is_package else parts)
    return Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)), is_package)


@functools.lru_cache(maxsize=None)
def _load_tree(root: Path) -> tuple[Module, ...]:
    return tuple(parse_module(root, path) for path in sorted((root / "vlbench").rglob("*.py")))


def load_tree(root: Path = SRC) -> dict[str, Module]:
    """Every module under root/vlbench, by dotted name (parsed once per session)."""
    return {m.name: m for m in _load_tree(root)}


def imports_of(module: Module, modules: dict[str, Module]) -> list[Import]:
    return _imports_of(module, frozenset(modules))


@functools.lru_cache(maxsize=None)
def _imports_of(module: Module, modules: frozenset[str]) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST, module_level: bool, guarded: bool = False) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Try) and any(h.type is not None and re.search(
                    r"\b(ImportError|ModuleNotFoundError)\b", ast.unparse(h.type)) for h in child.handlers):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), module_level, True)
                for part in (*child.handlers, *child.orelse, *child.finalbody):
                    visit(ast.Module(body=[part], type_ignores=[]), module_level, guarded)
                continue
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, module_level, guarded) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
                    package = package[:len(package) - (child.level - 1)]
                    base = ".".join(package + ([base] if base else []))
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.append(Import(full if full in modules else base, child.lineno, module_level, guarded))
            visit(child, module_level, guarded)

    visit(module.tree, True)
    return found


def short(name: str) -> str:
    """`vlbench.engine.blend` -> `engine.blend` (the design doc's spelling); `vlbench` stays."""
    return name.removeprefix("vlbench.")


def within(name: str, prefixes: set[str]) -> bool:
    """Whether module `name` (short form) is one of `prefixes` or inside one of those packages."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# ---------------------------------------------------------------- (a) the import layers, from docs/design.md
def layers(design: Path = DESIGN) -> dict[str, set[str]]:
    """rule -> the modules its row names (backticked, in the short form), from the import-layers table."""
    text = design.read_text(encoding="utf-8")
    start, end = "<!-- import-layers:start -->", "<!-- import-layers:end -->"
    assert start in text and end in text, "docs/design.md lost its import-layers table"
    rows = {}
    for line in text.split(start, 1)[1].split(end, 1)[0].strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("*")] = set(re.findall(r"`([\w.]+)`", cells[1]))
    return rows


def check_imports(modules: dict[str, Module], rules: dict[str, set[str]]) -> list[str]:
    """Every breach of the table's rules, one line each."""
    problems = []
    graph = {name: imports_of(m, modules) for name, m in modules.items()}
    foundations, engine, torch_modules, argparse_users = (rules["foundations"], rules["engine"], rules["torch"],
                                                          rules["argparse"])
    schema, schema_may = rules["recipe"], {"errors", "files"}
    screen = rules["screen"]
    for name, found in graph.items():
        here = short(name)
        for imp in found:
            there = short(imp.target)
            if within(here, engine) and imp.target.startswith("vlbench") and not (
                    within(there, engine) or within(there, foundations)):
                problems.append(f"{here}:{imp.line} imports {there}: the engine imports only the foundations")
            if within(here, schema) and imp.target.startswith("vlbench.") and not (
                    within(there, schema) or within(there, schema_may)):
                problems.append(f"{here}:{imp.line} imports {there}: the recipe imports only errors and files")
            if within(there, {"tui"}) and imp.target.startswith("vlbench.") and not within(here, screen):
                problems.append(f"{here}:{imp.line} imports {there}: only the workbench sees the screen")
            if imp.target.split(".")[0] == "argparse" and not within(here, argparse_users):
                problems.append(f"{here}:{imp.line} imports argparse: only the command line sees it")
            if imp.module_level and any(imp.target == t or imp.target.startswith(t + ".") for t in TORCH) \
                    and here not in torch_modules:
                problems.append(f"{here}:{imp.line} imports {imp.target} at module level: not a torch module")
    # torch-free, transitively: a module's module-level imports (and their packages' __init__) reach no torch module
    for name in modules:
        if short(name) in torch_modules:
            continue
        path = _reaches(name, graph, modules, torch_modules)
        if path:
            problems.append(f"{short(name)} imports torch at module level through {' -> '.join(map(short, path))}")
    problems.extend(f"import cycle at module level: {' -> '.join(cycle)}" for cycle in _cycles(graph))
    problems.extend(f"import cycle (module level or inside a function): {' -> '.join(cycle)}"
                    for cycle in acyclic_cycles(graph, rules["acyclic"]))
    return problems


def acyclic_cycles(graph, listed: set[str]) -> list[list[str]]:
    """Cycles through the table's `acyclic` modules and packages, over every import (module level AND inside a
    function: a lazy import that closes a circle still ties the two ends together). A module counts as the
    longest listed name that holds it (a listed package is one node), any other module as itself; one cycle is
    shown per strongly connected group that holds a listed node."""
    def node(name: str) -> str:
        here = short(name)
        return max((p for p in listed if here == p or here.startswith(p + ".")), key=len, default=here)

    edges: dict[str, set[str]] = {}
    for name, found in graph.items():
        for imp in found:
            if imp.target in graph and node(imp.target) != node(name):
                edges.setdefault(node(name), set()).add(node(imp.target))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            groups.append(group)

    for v in sorted(edges):
        if v not in index:
            connect(v)
    cycles = []
    for group in groups:
        members = set(group)
        start = min((g for g in group if g in listed), default=None)
        if len(group) < 2 or start is None:
            continue
        came: dict[str, str | None] = {start: None}  # breadth first: the shortest way round back to `start`
        frontier, last = [start], None
        while last is None:
            following = []
            for v in frontier:
                for w in sorted(edges.get(v, set()) & members):
                    if w == start and last is None:
                        last = v
                    elif w not in came:
                        came[w] = v
                        following.append(w)
            frontier = following
        path = [last]
        while came[path[-1]] is not None:
            path.append(came[path[-1]])
        cycles.append([*path[::-1], start])
    return cycles


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def _reaches(start: str, graph, modules, torch_modules: set[str]) -> list[str] | None:
    """The module-level import path from `start` to a torch module, or None."""
    seen, todo = {start: None}, [start]
    while todo:
        current = todo.pop()
        nexts = [*_parents(current), *(i.target for i in graph[current] if i.module_level and i.target in modules)]
        for nxt in nexts:
            if nxt in seen or nxt not in modules:
                continue
            seen[nxt] = current
            if short(nxt) in torch_modules:
                path = [nxt]
                while seen[path[-1]] is not None:
                    path.append(seen[path[-1]])
                return path[::-1]
            todo.append(nxt)
    return None


def _cycles(graph) -> list[list[str]]:
    """Cycles among the top-level modules and packages (`vlbench.X`) through module-level imports."""
    def top(name: str) -> str:
        return ".".join(name.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for name, found in graph.items():
        for imp in found:
            if imp.module_level and imp.target.startswith("vlbench.") and top(imp.target) != top(name):
                edges.setdefault(short(top(name)), set()).add(short(top(imp.target)))
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def test_the_import_layers_table_names_real_modules():
    rules, modules = layers(), {short(n) for n in load_tree()}
    assert set(rules) == {"foundations", "engine", "torch", "argparse", "recipe", "screen", "acyclic"}, set(rules)
    for rule, names in rules.items():
        assert names, rule
        assert names <= modules, (rule, names - modules)


def test_the_import_layers_hold():
    assert check_imports(load_tree(), layers()) == []


def plant(tmp_path: Path, module: str, source: str, modules: dict[str, Module] | None = None) -> dict[str, Module]:
    """The real tree plus `module`: its source written to a file under tmp_path and parsed from there."""
    path = tmp_path / Path(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    planted = parse_module(tmp_path, path)
    return {**(modules if modules is not None else load_tree()), planted.name: planted}


@pytest.mark.parametrize("module, source, expected", [
    ("vlbench.engine.planted", "from vlbench.store import Store\n", "engine.planted:1 imports store"),
    ("vlbench.engine.planted", "def f():\n    from vlbench.tui import app\n", "engine.planted:2 imports tui.app"),
    ("vlbench.planted", "import argparse\n", "planted:1 imports argparse"),
    ("vlbench.recipe.planted", "def f():\n    from vlbench.store import Store\n", "recipe.planted:2 imports store"),
    ("vlbench.worker.planted", "def f():\n    from vlbench.tui.wording import render\n",
     "worker.planted:2 imports tui.wording: only the workbench sees the screen"),
    ("vlbench.planted", "import torch\n", "planted:1 imports torch at module level"),
    ("vlbench.planted", "from vlbench.engine.blend import mix\n",
     "planted imports torch at module level through planted -> engine.blend"),
    ("vlbench.store_planted", "from vlbench.tui import app\n", "import cycle"),
])
def test_the_import_checker_catches_a_planted_violation(tmp_path, module, source, expected):
    modules = plant(tmp_path, module, source)
    if module == "vlbench.store_planted":  # a cycle needs both ends: tui.app -> store_planted -> tui
        app = (SRC / "vlbench" / "tui" / "app.py").read_text()
        modules = plant(tmp_path, "vlbench.tui.app", "import vlbench.store_planted\n" + app, modules)
    problems = check_imports(modules, layers())
    assert any(expected in p for p in problems), problems


def test_a_module_of_a_foundation_package_is_a_foundation(tmp_path):
    """The table names the package (`recipe`); the engine may import its modules (recipe.vocab) as well."""
    modules = plant(tmp_path, "vlbench.engine.planted", "from vlbench.recipe.vocab import Tokens\n")
    assert check_imports(modules, layers()) == []


@pytest.mark.parametrize("module, source, other, planted_source", [
    # experiments -> analysis inside a function closes analysis.report -> experiments.folder (module level)
    ("vlbench.experiments.planted", "def f():\n    from vlbench.analysis.report import write_report\n", None, None),
    # the tui/app.py <-> tui/launch.py circle, put back: app imports launch inside a method
    ("vlbench.tui.app", None, "vlbench.tui.app", "\n\ndef planted():\n    from vlbench.tui.launch import run_tui\n"),
])
def test_the_cycle_checker_catches_a_planted_lazy_cycle(tmp_path, module, source, other, planted_source):
    if source is None:
        source = (SRC / Path(*other.split("."))).with_suffix(".py").read_text() + planted_source
    problems = check_imports(plant(tmp_path, module, source), layers())
    assert [p for p in problems if p.startswith("import cycle (module level or inside a function)")], problems


def test_the_cycle_checker_names_the_way_round():
    graph = {f"vlbench.{n}": [Import(f"vlbench.{t}", 1, False) for t in ts]
             for n, ts in {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": []}.items()}
    assert acyclic_cycles(graph, {"a", "d"}) == [["a", "b", "c", "a"]]
    assert acyclic_cycles(graph, {"d"}) == []  # a cycle through no listed module is not this rule's


def test_a_torch_import_inside_a_function_keeps_a_module_torch_free(tmp_path):
    modules = plant(tmp_path, "vlbench.planted", "def f():\n    import torch\n    from vlbench.engine.blend import mix\n")
    assert check_imports(modules, layers()) == []


# ---------------------------------------------------------------- (b) writes go through files.atomic_write
# (module, what) -> why it is not an atomic write. `what` is the call as check_writes names it.
ALLOWED_WRITES = {
    ("experiments.results", "open(mode='a')"): "results.jsonl is an append-only ledger: a line is appended, "
                                               "fsynced, and a torn last line is dropped on read",
    ("executors.ray_executor", "open(mode='a')"): "the log file: appended lines, as logging does",
    ("experiments.folder", "open(mode='w')"): "the output folder's lock file: opened for flock, never written",
    ("engine.tiny", "os.replace"): "the tiny models' built folders swapped into place (a folder rename)",
    ("engine.tiny", ".save_pretrained()"): "the tiny-model builders write a model folder into a temporary "
                                           "sibling, which is renamed in whole",
    ("metrics.tiny", ".save_pretrained()"): "the tiny metric models: built into a temporary sibling, renamed in",
    ("engine.tiny", ".write_text()"): "the STAMP and README of the tiny models' temporary build folder",
    ("metrics.tiny", ".write_text()"): "the STAMP of the tiny metric models' temporary build folder",
    ("metrics.tiny", "save_file()"): "a tiny metric model's weights, into its temporary build folder",
}

WRITE_MODES = re.compile(r"[wax+]")
WRITERS = {"write_text", "write_bytes", "save_pretrained", "savefig"}
COPIERS = {("shutil", "copy"), ("shutil", "copy2"), ("shutil", "copyfile"), ("shutil", "copytree"),
           ("shutil", "move"), ("os", "replace"), ("os", "rename"), ("torch", "save"), ("np", "save"),
           ("numpy", "save")}
ATOMIC = {"atomic_write", "atomic_path", "atomic_write_text", "atomic_write_bytes", "atomic_write_json",
          "atomic_copy"}


def _call_name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _mode(call: ast.Call, position: int) -> str | None:
    """The mode argument of an open() call (positional at `position` or mode=), if a literal."""
    node = call.args[position] if len(call.args) > position else next(
        (k.value for k in call.keywords if k.arg == "mode"), None)
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _atomic_scopes(tree: ast.Module) -> set[int]:
    """ids of nodes whose body writes a temp file for the atomic helper: a lambda or a named function passed to an
    atomic_* call, and the body of `with atomic_path(...) as tmp:`."""
    inside: set[int] = set()
    passed: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _call_name(node.func) in ATOMIC:
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if isinstance(arg, ast.Lambda):
                    inside.update(id(n) for n in ast.walk(arg))
                elif isinstance(arg, ast.Name):
                    passed.add(arg.id)
        if isinstance(node, ast.With) and any(isinstance(i.context_expr, ast.Call)
                                              and _call_name(i.context_expr.func) in ATOMIC for i in node.items):
            inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in passed:
            inside.update(id(n) for n in ast.walk(node))
    return inside


@functools.lru_cache(maxsize=None)
def check_writes(module: Module) -> list[tuple[int, str]]:
    """(line, what) of each file write that does not go through files.atomic_write."""
    if module.name == "vlbench.files":
        return []
    atomic = _atomic_scopes(module.tree)
    in_memory = {t.id for node in ast.walk(module.tree) if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Call) and _call_name(node.value.func) in ("BytesIO", "StringIO")
                 for t in node.targets if isinstance(t, ast.Name)}  # image.save(buf): bytes in memory
    found = []
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.Call) or id(node) in atomic:
            continue
        name, func = _call_name(node.func), node.func
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        if isinstance(func, ast.Name) and name == "open":
            mode = _mode(node, 1)
            if mode is not None and WRITE_MODES.search(mode):
                found.append((node.lineno, f"open(mode={mode.replace('b', '')[:1]!r})"))
        elif isinstance(func, ast.Attribute) and name == "open" and owner not in ("Image", "os", "io"):
            mode = _mode(node, 0)  # Path.open(mode)
            if mode is not None and WRITE_MODES.search(mode):
                found.append((node.lineno, f".open(mode={mode.replace('b', '')[:1]!r})"))
        elif isinstance(func, ast.Attribute) and (owner, name) in COPIERS:
            found.append((node.lineno, f"{owner}.{name}"))
        elif isinstance(func, ast.Attribute) and name in WRITERS:
            found.append((node.lineno, f".{name}()"))
        elif name in ("save_file", "save_model"):  # safetensors
            found.append((node.lineno, f"{name}()"))
        elif isinstance(func, ast.Attribute) and name == "save" and owner not in ("torch", "np", "numpy") and not (
                node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in in_memory):
            found.append((node.lineno, ".save()"))  # PIL's Image.save, a pipeline's save
    return found


def write_problems(modules: dict[str, Module]) -> list[str]:
    return [f"{short(name)}:{line}: {what}" for name, m in modules.items() for line, what in check_writes(m)
            if (short(name), what) not in ALLOWED_WRITES]


def test_no_module_writes_a_file_except_through_the_atomic_helper():
    assert write_problems(load_tree()) == []


def test_every_allowed_write_is_still_there():
    """An allowlist entry whose write is gone is removed, so the list stays the list of exceptions."""
    found = {(short(n), what) for n, m in load_tree().items() for _, what in check_writes(m)}
    assert set(ALLOWED_WRITES) - found == set()


@pytest.mark.parametrize("source, what", [
    ("def f(p):\n    open(p, 'w').write('x')\n", "open(mode='w')"),
    ("def f(p):\n    with open(p, mode='ab') as f:\n        f.write(b'x')\n", "open(mode='a')"),
    ("from pathlib import Path\ndef f(p):\n    Path(p).write_text('x')\n", ".write_text()"),
    ("from pathlib import Path\ndef f(p):\n    with Path(p).open('w') as f:\n        pass\n", ".open(mode='w')"),
    ("import shutil\ndef f(a, b):\n    shutil.copy(a, b)\n", "shutil.copy"),
    ("import os\ndef f(a, b):\n    os.replace(a, b)\n", "os.replace"),
    ("from safetensors.torch import save_file\ndef f(t, p):\n    save_file(t, p)\n", "save_file()"),
    ("import torch\ndef f(t, p):\n    torch.save(t, p)\n", "torch.save"),
    ("def f(image, p):\n    image.save(p)\n", ".save()"),
])
def test_the_write_checker_catches_a_planted_write(tmp_path, source, what):
    modules = plant(tmp_path, "vlbench.planted", source)
    assert any(p.startswith("planted:") and p.endswith(what) for p in write_problems(modules))


def test_writes_through_the_atomic_helper_pass(tmp_path):
    modules = plant(tmp_path, "vlbench.planted", """
import io

from vlbench.files import atomic_path, atomic_write

def f(p, image, tensors):
    atomic_write(p, lambda tmp: tmp.write_text("x"))
    atomic_write(p, lambda tmp: image.save(tmp, format="PNG"))
    def write(tmp):
        tmp.write_bytes(b"x")
    atomic_write(p, write)
    with atomic_path(p) as tmp:
        open(tmp, "w").write("x")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
""")
    assert [p for p in write_problems(modules) if p.startswith("planted:")] == []


# ---------------------------------------------------------------- (c) reads go through vlbench.files
# (module, what) -> why this read does not need the guarded reader.
ALLOWED_READS = {
    ("process", ".read_text()"): "/proc/PID/stat, a kernel file (not an input a user names)",
    ("experiments.results", "open(mode='r')"): "results.jsonl, the folder's own ledger, read line by line "
                                               "(any size; a torn last line is dropped)",
    ("pngs", "open(mode='r')"): "hashing a finished PNG in chunks to verify it on resume (any size)",
    ("engine.tiny", ".read_text()"): "the tiny models' own STAMP file in vlbench's cache",
    ("metrics.tiny", ".read_text()"): "the tiny metric models' own STAMP file in vlbench's cache",
}


@functools.lru_cache(maxsize=None)
def check_reads(module: Module) -> list[tuple[int, str]]:
    """(line, what) of each file read that does not go through vlbench.files' readers."""
    if module.name == "vlbench.files":
        return []
    found = []
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.Call):
            continue
        name, func = _call_name(node.func), node.func
        if isinstance(func, ast.Name) and name == "open":
            mode = _mode(node, 1) or "r"
            if not WRITE_MODES.search(mode):
                found.append((node.lineno, "open(mode='r')"))
        elif isinstance(func, ast.Attribute) and name in ("read_text", "read_bytes"):
            found.append((node.lineno, f".{name}()"))
        elif isinstance(func, ast.Attribute) and name == "load" and isinstance(func.value, ast.Name) \
                and func.value.id in ("json", "tomllib", "pickle"):
            found.append((node.lineno, f"{func.value.id}.load"))
    return found


def read_problems(modules: dict[str, Module]) -> list[str]:
    return [f"{short(name)}:{line}: {what}" for name, m in modules.items() for line, what in check_reads(m)
            if (short(name), what) not in ALLOWED_READS]


def test_no_module_reads_an_input_file_except_through_the_guarded_reader():
    assert read_problems(load_tree()) == []


def test_every_allowed_read_is_still_there():
    found = {(short(n), what) for n, m in load_tree().items() for _, what in check_reads(m)}
    assert set(ALLOWED_READS) - found == set()


@pytest.mark.parametrize("source, what", [
    ("def f(p):\n    return open(p).read()\n", "open(mode='r')"),
    ("def f(p):\n    return open(p, 'rb').read()\n", "open(mode='r')"),
    ("from pathlib import Path\ndef f(p):\n    return Path(p).read_text()\n", ".read_text()"),
    ("from pathlib import Path\ndef f(p):\n    return Path(p).read_bytes()\n", ".read_bytes()"),
    ("import json\ndef f(fh):\n    return json.load(fh)\n", "json.load"),
])
def test_the_read_checker_catches_a_planted_read(tmp_path, source, what):
    modules = plant(tmp_path, "vlbench.planted", source)
    assert any(p.startswith("planted:") and p.endswith(what) for p in read_problems(modules))


def test_reads_through_the_guarded_reader_pass(tmp_path):
    modules = plant(tmp_path, "vlbench.planted", """
from vlbench.files import read_bytes_file, read_text_file, read_toml_file

def f(p):
    return read_text_file(p), read_bytes_file(p), read_toml_file(p)
""")
    assert [p for p in read_problems(modules) if p.startswith("planted:")] == []


# ---------------------------------------------------------------- (d) lazy imports only where they keep weight out
# A function-level import is for keeping a heavy package off a module that does not need it when imported (the
# command line's --help, the workbench before its first paint, the store, the worker's thread before torch): anything
# else is imported at the top of its file. Third-party packages imported lazily, each with its reason:
HEAVY = {
    "torch": "torch itself: seconds and gigabytes; only the torch modules (the import-layers table) import it on load",
    "torchvision": "torch's image library (transformers' Qwen3-VL processor)",
    "torchao": "fp8 weights: torch and its kernels",
    "transformers": "the VL and text models: imports torch",
    "diffusers": "the DiT pipeline: imports torch",
    "accelerate": "model placement: imports torch",
    "safetensors": "weights files (its torch half imports torch)",
    "tokenizers": "the Rust tokenizers, loaded with the models",
    "huggingface_hub": "the model cache's API, needed when models load",
    "ImageReward": "an optional metric's package (and torch)",
    "matplotlib": "plots: a second or more; only the report and diagnostics draw",
    "optuna": "optional (vlbench search): SQLAlchemy and alembic behind it",
    "ray": "optional (--executor ray): hundreds of modules",
    "statsmodels": "optional (--mixed-model): pandas and patsy behind it",
    "pandas": "statsmodels' data frames, with it",
    "pyarrow": "optional (export --format parquet)",
    "scipy": "special functions and tests: only statistics and metrics call them (the workbench paints first)",
    "numpy": "arrays: the store, the recipe, the worker's queue and --help do not need them",
    "PIL": "images: decoded where a picture is read or drawn, not where a path is named",
    "textual": "the workbench's framework: the command line imports it only for `vlbench tui`",
    "textual_image": "the workbench's image widget: it queries the terminal when imported",
    "rich": "the console's tables and markup: only where a command prints",
    "platformdirs": "the data and cache folders (vlbench.paths): absent on the GPU machines, where the engine's "
                    "benchmarks run without it (tests/test_dual_batch.py blocks it)",
    "jinja2": "templates: only the report renders one",
}
# (module, vlbench module) -> why that import stays inside a function although it is light: importing it at the
# top would close an import cycle (each entry is checked to be one).
CYCLE_BREAKING: dict[tuple[str, str], str] = {
    ("modelspec", "engine.tiny"): "the tiny models' paths, built on demand; engine.models imports modelspec",
    ("cli.tui", "tui.launch"): "`vlbench tui` starts the workbench; `python -m vlbench.tui` enters through the cli",
}


def _closure(start: str, graph, modules, skip: frozenset[str] = frozenset()) -> set[str]:
    """The vlbench modules that importing `start` runs: module-level imports and the packages' __init__, transitively
    (`skip`: packages already being imported, whose __init__ does not run again for a submodule)."""
    seen, todo = {start}, [start]
    while todo:
        current = todo.pop()
        parents = [p for p in _parents(current) if p not in skip]
        for nxt in [*parents, *(i.target for i in graph[current] if i.module_level)]:
            if nxt in modules and nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def heavy_packages(name: str, graph, modules) -> set[str]:
    """The HEAVY packages (and torch, through a torch module) that importing module `name` imports."""
    found = set()
    for m in _closure(name, graph, modules):
        found.update(i.target.split(".")[0] for i in graph[m] if i.module_level and i.target.split(".")[0] in HEAVY)
    return found


def closes_a_cycle(importer: str, target: str, graph, modules) -> bool:
    """Whether importing `target` at the top of `importer` would import `importer` again (a cycle at load), or tie
    their top-level packages into a circle (the module-level rule of check_imports)."""
    if importer in _closure(target, graph, modules, skip=frozenset([*_parents(importer), importer])):
        return True

    def top(name: str) -> str:
        return ".".join(name.split(".")[:2])

    if top(importer) == top(target):
        return False
    edges: dict[str, set[str]] = {}
    for name, found in graph.items():
        for imp in found:
            if imp.module_level and imp.target.startswith("vlbench."):
                edges.setdefault(top(name), set()).add(top(imp.target))
    seen, todo = {top(target)}, [top(target)]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt == top(importer):
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def lazy_import_problems(modules: dict[str, Module]) -> list[str]:
    """Each function-level import that keeps nothing heavy out and breaks no cycle, one line each."""
    graph = {name: imports_of(m, modules) for name, m in modules.items()}
    heavy = functools.lru_cache(maxsize=None)(lambda n: frozenset(heavy_packages(n, graph, modules)))
    problems = []
    for name, found in graph.items():
        for imp in found:
            if imp.module_level or imp.guarded:
                continue
            root = imp.target.split(".")[0]
            if root != "vlbench":
                if root not in HEAVY:
                    problems.append(f"{short(name)}:{imp.line} imports {imp.target} inside a function: "
                                    "light (not in HEAVY); import it at the top")
                continue
            if imp.target not in modules or imp.target == name:
                continue
            if heavy(imp.target) - heavy(name) or (short(name), short(imp.target)) in CYCLE_BREAKING:
                continue
            problems.append(f"{short(name)}:{imp.line} imports {short(imp.target)} inside a function: it brings "
                            "nothing heavy and closes no cycle; import it at the top")
    return problems


def test_lazy_imports_only_keep_heavy_packages_out():
    assert lazy_import_problems(load_tree()) == []


def test_each_cycle_breaking_lazy_import_is_one():
    modules = load_tree()
    graph = {name: imports_of(m, modules) for name, m in modules.items()}
    for module, target in CYCLE_BREAKING:
        assert closes_a_cycle(f"vlbench.{module}", f"vlbench.{target}", graph, modules), (module, target)


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    import json\n", "planted:2 imports json inside a function"),
    ("def f():\n    from vlbench.errors import UserError\n", "planted:2 imports errors inside a function"),
    ("class C:\n    def f(self):\n        import vlbench.records\n", "planted:3 imports records inside"),
])
def test_the_lazy_import_checker_catches_a_planted_light_import(tmp_path, source, expected):
    problems = lazy_import_problems(plant(tmp_path, "vlbench.planted", source))
    assert any(p.startswith(expected) for p in problems), problems


def test_heavy_and_optional_lazy_imports_pass(tmp_path):
    modules = plant(tmp_path, "vlbench.planted", """
def f():
    import torch
    from matplotlib.figure import Figure
    from vlbench.engine.blend import mix
    try:
        import fcntl
    except ImportError:
        return None
""")
    assert [p for p in lazy_import_problems(modules) if p.startswith("planted:")] == []
