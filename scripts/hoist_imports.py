"""Move light function-level imports to the top of their files (issue 24's lazy-import rule, tests/test_structure.py
`test_lazy_imports_only_keep_heavy_packages_out`). From the repository root, with PYTHONPATH=src:

    python scripts/hoist_imports.py PREFIX...     # short module names: cli, analysis, tui, worker, recipe, ...

Per module, an import inside a function moves to the top when it is the standard library or a vlbench module that
brings no HEAVY package the module lacks and closes no import cycle (test_structure's own judges); it is merged into
an existing `from X import` line or inserted in sorted place. Prints MOVE / SKIP (and why) per import; review the
diff (a test that monkeypatches a moved name must patch it where it is used now). A maintenance tool: run it after a
merge brings new lazy imports, then commit per package.
"""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import test_structure as T  # noqa: E402

SRC = ROOT / "src"
WIDTH = 120
STDLIB = set(sys.stdlib_module_names)


def parse_all():
    return {m.name: m for m in (T.parse_module(SRC, p) for p in sorted((SRC / "vlbench").rglob("*.py")))}


def group_of(module: str) -> int:
    root = module.split(".")[0]
    if module == "__future__":
        return 0
    if root in STDLIB:
        return 1
    if root == "vlbench":
        return 3
    return 2


def resolve(node: ast.ImportFrom, mod: T.Module) -> str:
    base = node.module or ""
    if node.level:
        package = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    return base


def function_imports(tree):
    """(stmt, parent body list, guarded) for each import inside a function (not in TYPE_CHECKING / try-ImportError)."""
    out = []

    def visit(body, in_function, guarded):
        for stmt in body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                if in_function and not guarded:
                    out.append((stmt, body))
                continue
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(stmt.body, True, False)
                continue
            if isinstance(stmt, ast.ClassDef):
                visit(stmt.body, in_function, guarded)
                continue
            if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
                continue
            if isinstance(stmt, ast.Try):
                g = any(h.type is not None and ("ImportError" in ast.unparse(h.type)
                                                or "ModuleNotFoundError" in ast.unparse(h.type)) for h in stmt.handlers)
                visit(stmt.body, in_function, guarded or g)
                for h in stmt.handlers:
                    visit(h.body, in_function, guarded)
                visit(stmt.orelse, in_function, guarded)
                visit(stmt.finalbody, in_function, guarded)
                continue
            for field in ("body", "orelse", "finalbody"):
                sub = getattr(stmt, field, None)
                if isinstance(sub, list) and sub and isinstance(sub[0], ast.stmt):
                    visit(sub, in_function, guarded)
            if isinstance(stmt, ast.Match):
                for case in stmt.cases:
                    visit(case.body, in_function, guarded)

    visit(tree.body, False, False)
    return out


def module_bindings(tree):
    """name -> ('import', module, name) for top-level imports, or ('other',) for anything else bound at the top."""
    bound = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                bound[a.asname or a.name.split(".")[0]] = ("import", a.name if a.asname else a.name.split(".")[0], None)
        elif isinstance(stmt, ast.ImportFrom):
            for a in stmt.names:
                bound[a.asname or a.name] = ("from", stmt.module, a.name)
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound[stmt.name] = ("other",)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        bound[n.id] = ("other",)
        else:
            for n in ast.walk(stmt):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    bound.setdefault(n.id, ("other",))
    return bound


def type_rank(name: str) -> int:
    if name.isupper() or (name.upper() == name and "_" in name):
        return 0
    if name[:1].isupper():
        return 1
    return 2


def alias_text(a: ast.alias) -> str:
    return a.name + (f" as {a.asname}" if a.asname else "")


def format_from(module: str, aliases: list[str]) -> list[str]:
    one = f"from {module} import {', '.join(aliases)}"
    if len(one) <= WIDTH:
        return [one]
    head = f"from {module} import ("
    lines, current = [], head
    for i, a in enumerate(aliases):
        piece = a + (", " if i < len(aliases) - 1 else ")")
        if len(current) + len(piece.rstrip()) > WIDTH and current.strip() not in (head.strip(),):
            lines.append(current.rstrip())
            current = " " * len(head) + piece
        else:
            current += piece
    lines.append(current.rstrip())
    return lines


def sort_aliases(aliases: list[str]) -> list[str]:
    return sorted(set(aliases), key=lambda a: (type_rank(a.split(" as ")[0]), a.lower()))


def stmt_key(kind: int, module: str):
    return (kind, module.lower())


def hoist_module(mod: T.Module, modules, graph, heavy_cache, report) -> bool:
    src = mod.path.read_text(encoding="utf-8")
    lines = src.splitlines(keepends=True)
    tree = ast.parse(src)
    bound = module_bindings(tree)
    removals = []  # (start, end) 0-based inclusive line ranges
    additions = []  # ("import", module, asname) / ("from", module, alias_text)
    emptied = {}
    name = mod.name
    for stmt, body in function_imports(tree):
        ok = True
        why = ""
        entries = []
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                entries.append(("import", a.name, a))
        else:
            base = resolve(stmt, mod)
            for a in stmt.names:
                entries.append(("from", base, a))
        for kind, module, a in entries:
            root = module.split(".")[0]
            if root == "vlbench":
                target = f"{module}.{a.name}" if kind == "from" and f"{module}.{a.name}" in modules else module
                if target not in modules:
                    ok, why = False, f"unknown {target}"
                    break
                if target == name:
                    ok, why = False, "self"
                    break
                ht = heavy_cache(target)
                hm = heavy_cache(name)
                if ht - hm:
                    ok, why = False, f"heavy {sorted(ht - hm)}"
                    break
                if T.closes_a_cycle(name, target, graph, modules):
                    ok, why = False, f"cycle via {T.short(target)}"
                    break
            elif root in T.HEAVY:
                ok, why = False, "heavy third-party"
                break
            bind = (a.asname or (a.name.split(".")[0] if kind == "import" else a.name))
            have = bound.get(bind)
            want = ("import", a.name if a.asname else a.name.split(".")[0], None) if kind == "import" else \
                ("from", module, a.name)
            if have is not None and have != want:
                ok, why = False, f"name clash {bind}: {have}"
                break
        if not ok:
            if not why.startswith("heavy third-party"):
                report.append(f"SKIP {T.short(name)}:{stmt.lineno} {ast.unparse(stmt)} ({why})")
            continue
        key = id(body)
        emptied.setdefault(key, [len(body), 0])
        emptied[key][1] += 1
        if emptied[key][1] >= emptied[key][0]:
            report.append(f"SKIP {T.short(name)}:{stmt.lineno} {ast.unparse(stmt)} (would empty its block)")
            continue
        removals.append((stmt.lineno - 1, stmt.end_lineno - 1))
        for kind, module, a in entries:
            bind = (a.asname or (a.name.split(".")[0] if kind == "import" else a.name))
            if bound.get(bind) is None:
                additions.append((kind, module, a))
                bound[bind] = ("import", a.name if a.asname else a.name.split(".")[0], None) if kind == "import" \
                    else ("from", module, a.name)
        report.append(f"MOVE {T.short(name)}:{stmt.lineno} {ast.unparse(stmt)}")
    if not removals:
        return False
    # ---- remove the lazy imports (and a blank line they leave right after a def or docstring)
    drop = set()
    for s, e in removals:
        drop.update(range(s, e + 1))
    for s, e in sorted(removals):
        before = s - 1
        while before in drop:
            before -= 1
        after = e + 1
        while after in drop:
            after += 1
        if after < len(lines) and not lines[after].strip() and before >= 0:
            prev = lines[before].rstrip()
            if prev.endswith(":") or prev.endswith('"""') or prev.endswith("'''") or prev.lstrip().startswith("#"):
                drop.add(after)
    for s, e in sorted(removals):  # two blank lines left where one was (a lazy import between blank lines)
        before = s - 1
        while before in drop:
            before -= 1
        after = e + 1
        while after in drop:
            after += 1
        if 0 <= before and after < len(lines) and not lines[before].strip() and not lines[after].strip() \
                and lines[after - 1 if after - 1 not in drop else after].startswith((" ", "\t", "\n")) \
                and (after + 1 < len(lines) and lines[after + 1].startswith((" ", "\t"))):
            drop.add(after)
    # ---- add at the top: merge into an existing `from X import` or insert a sorted line
    top = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
    replace = {}  # stmt start line -> (end line, new lines)
    inserts = []  # (line index to insert before, text lines, group)
    by_from = {}
    for s in top:
        if isinstance(s, ast.ImportFrom) and s.level == 0 and s.module != "__future__":
            by_from.setdefault(s.module, s)
    merged: dict[int, list[str]] = {}
    new_stmts = []
    for kind, module, a in additions:
        if kind == "from" and module in by_from:
            s = by_from[module]
            merged.setdefault(s.lineno, [alias_text(x) for x in s.names]).append(alias_text(a))
        elif kind == "from":
            existing = next((n for n in new_stmts if n[0] == "from" and n[1] == module), None)
            if existing:
                existing[2].append(alias_text(a))
            else:
                new_stmts.append(["from", module, [alias_text(a)]])
        else:
            new_stmts.append(["import", alias_text(a), None])
    for lineno, aliases in merged.items():
        s = next(x for x in top if x.lineno == lineno)
        replace[s.lineno - 1] = (s.end_lineno - 1, [l + "\n" for l in format_from(s.module, sort_aliases(aliases))])
    existing_keys = []
    for s in top:
        if isinstance(s, ast.Import):
            existing_keys.append((group_of(s.names[0].name), stmt_key(0, s.names[0].name), s))
        else:
            existing_keys.append((group_of(s.module or ""), stmt_key(1, s.module or ""), s))
    new_stmts.sort(key=lambda n: (group_of(n[1].split(" as ")[0]), stmt_key(0 if n[0] == "import" else 1,
                                                                            n[1].split(" as ")[0])))
    for kind, module_or_alias, aliases in new_stmts:
        if kind == "import":
            module = module_or_alias.split(" as ")[0]
            text = [f"import {module_or_alias}\n"]
            g, k = group_of(module), stmt_key(0, module)
        else:
            module = module_or_alias
            text = [l + "\n" for l in format_from(module, sort_aliases(aliases))]
            g, k = group_of(module), stmt_key(1, module)
        same = [(kk, s) for gg, kk, s in existing_keys if gg == g]
        if same:
            after = [s for kk, s in same if kk > k]
            if after:
                inserts.append((after[0].lineno - 1, text, 0))
            else:
                inserts.append((same[-1][1].end_lineno, text, 0))
        else:
            lower = [s for gg, kk, s in existing_keys if gg < g]
            higher = [s for gg, kk, s in existing_keys if gg > g]
            if lower:
                inserts.append((lower[-1].end_lineno, ["\n", *text], 0))
            elif higher:
                inserts.append((higher[0].lineno - 1, [*text, "\n"], 0))
            else:
                doc_end = tree.body[0].end_lineno if tree.body and isinstance(tree.body[0], ast.Expr) else 0
                inserts.append((doc_end, ["\n", *text], 0))
        existing_keys.append((g, k, type("S", (), {"lineno": inserts[-1][0] + 1, "end_lineno": inserts[-1][0]})()))
        existing_keys.sort(key=lambda x: (x[0], x[1]))
    out = []
    by_index = {}
    for idx, text, _ in inserts:
        by_index.setdefault(idx, []).extend(text)
    i = 0
    while i <= len(lines):
        if i in by_index:
            out.extend(by_index[i])
        if i == len(lines):
            break
        if i in replace:
            end, new = replace[i]
            out.extend(new)
            i = end + 1
            continue
        if i not in drop:
            out.append(lines[i])
        i += 1
    text = "".join(out)
    ast.parse(text)
    mod.path.write_text(text, encoding="utf-8")
    return True


def main(prefixes):
    report = []
    modules = parse_all()
    graph = {n: T.imports_of(m, modules) for n, m in modules.items()}
    for name in sorted(modules):
        short = T.short(name)
        if not any(short == p or short.startswith(p + ".") for p in prefixes):
            continue
        cache = {}

        def heavy(n):
            if n not in cache:
                cache[n] = frozenset(T.heavy_packages(n, graph, modules))
            return cache[n]

        if hoist_module(modules[name], modules, graph, heavy, report):
            fresh = T.parse_module(SRC, modules[name].path)
            modules[name] = fresh
            T._imports_of.cache_clear()
            graph = {n: T.imports_of(m, modules) for n, m in modules.items()}
    print("\n".join(report))


if __name__ == "__main__":
    main(sys.argv[1:])
