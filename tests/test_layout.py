"""The architecture, as checks: imports point one way, models/ is the math, the CLI stays thin."""

import ast
import os
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "nextscale"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(tree: ast.Module, name: str, top_level_only: bool):
    """nextscale modules named by the import statements of one module (``from a import b`` names
    ``a.b`` when that is a module, else ``a``); with ``top_level_only``, only statements that run
    at import time (module body, including inside top-level if/try), not inside functions."""
    is_pkg = MODULES[name].name == "__init__.py"
    nodes = []
    if top_level_only:
        stack = list(tree.body)
        while stack:
            n = stack.pop()
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if isinstance(n, ast.ClassDef):
                    stack.extend(n.body)  # a class body runs at import time
                continue
            nodes.append(n)
            stack.extend(ast.iter_child_nodes(n))
    else:
        nodes = list(ast.walk(tree))
    for n in nodes:
        if isinstance(n, ast.Import):
            targets = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:  # relative import
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - n.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in n.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # `import nextscale.a.b.c` where c is an attribute
                t = t.rpartition(".")[0]
            if t.startswith("nextscale") and t != name:
                yield t


def _graph(top_level_only=True):
    g = {}
    for name, path in MODULES.items():
        deps = set(_imports(ast.parse(path.read_text()), name, top_level_only))
        # importing nextscale.a.b first imports the package nextscale.a (not counted for the root
        # package, whose __init__ only re-exports the public API)
        for d in list(deps):
            parent = d.rpartition(".")[0]
            while parent and parent != "nextscale":
                if parent != name and not name.startswith(parent + "."):
                    deps.add(parent)
                parent = parent.rpartition(".")[0]
        g[name] = deps
    return g


def _find_cycle(g):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(g.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state:
                c = visit(d)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_at_import_time():
    g = _graph(top_level_only=True)
    assert len(g) > 30 and "nextscale.models.var" in g["nextscale.accel.cpu"]
    cycle = _find_cycle(g)
    assert cycle is None, " -> ".join(cycle)


def test_no_import_cycle_even_through_function_level_imports():
    """Lazy (function-level) imports hide cycles from Python, not from a reader: none either,
    apart from the package root, which re-exports the API and is imported by nothing inside."""
    g = _graph(top_level_only=False)
    cycle = _find_cycle(g)
    assert cycle is None, " -> ".join(cycle)
    assert not any("nextscale" in deps for name, deps in g.items() if name != "nextscale")


def test_models_know_nothing_of_speed_paths_sampler_or_training():
    g = _graph(top_level_only=False)
    for name in [m for m in MODULES if m.startswith("nextscale.models")]:
        bad = {d for d in g[name] if not d.startswith(("nextscale.models", "nextscale.configs", "nextscale.errors"))}
        assert not bad, f"{name} imports {sorted(bad)}"
    text = (SRC / "models" / "var.py").read_text()
    for word in ("is_grad_enabled", "device.type ==", "threading", "workspace", "_forward_hooks", "winograd"):
        assert word not in text, f"models/var.py mentions {word!r} (speed paths live in nextscale.accel)"
    assert len(text.splitlines()) <= 430  # ruff-formatted (line length 120); was 340 at up to 200 characters


def test_library_never_imports_train():
    """Only the front ends that run training import it: the CLI and the studies (which train sweeps)."""
    g = _graph(top_level_only=False)
    for name, deps in g.items():
        if name.startswith(("nextscale.train", "nextscale.app")) or name == "nextscale.__main__":
            continue
        assert not any(d.startswith("nextscale.train") for d in deps), f"{name} imports nextscale.train"


def test_app_is_a_leaf():
    """The front ends (CLI, demo, studies) live in nextscale.app; nothing else imports them, so the
    library can be used, tested and packaged without its front ends."""
    g = _graph(top_level_only=False)
    assert any(n.startswith("nextscale.app.") for n in g), "no nextscale.app modules found"
    for name, deps in g.items():
        if name.startswith("nextscale.app") or name == "nextscale.__main__":
            continue
        bad = sorted(d for d in deps if d == "nextscale.app" or d.startswith("nextscale.app."))
        assert not bad, f"{name} imports the front end(s) {bad}"


def _private_reach_ins(path: pathlib.Path):
    """``from nextscale.x import _y`` and ``x._y`` (``x`` a nextscale module or a name imported from
    one) in the file at ``path``, as "line: text"."""
    tree = ast.parse(path.read_text())
    imported = set()  # local names bound to nextscale modules / their members
    bad = []
    for n in ast.walk(tree):
        if (
            isinstance(n, ast.ImportFrom)
            and (n.module or "").startswith("nextscale")
            or (isinstance(n, ast.ImportFrom) and n.level)
        ):
            for a in n.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    bad.append(f"{n.lineno}: from {n.module} import {a.name}")
                imported.add(a.asname or a.name)
        elif isinstance(n, ast.Import):
            imported.update(a.asname or a.name.split(".")[0] for a in n.names if a.name.startswith("nextscale"))
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__"):
            base = n.value
            while isinstance(base, ast.Attribute):  # nextscale.hub._x: the root name
                base = base.value
            if isinstance(base, ast.Name) and base.id in imported:
                bad.append(f"{n.lineno}: {ast.unparse(n)}")
    return bad


def test_private_reach_in_finder_finds_planted_ones(tmp_path):
    p = tmp_path / "m.py"
    p.write_text(
        "import nextscale.hub\nfrom nextscale import hub as h\nfrom nextscale.data import _x, y\n"
        "def f():\n    return nextscale.hub._atomic_dir, h._read_json, y._z, y.ok\n"
    )
    assert _private_reach_ins(p) == [
        "3: from nextscale.data import _x",
        "5: nextscale.hub._atomic_dir",
        "5: h._read_json",
        "5: y._z",
    ]


def test_no_module_uses_another_modules_private_names():
    """A leading underscore means "this module only": the library, its front ends, the benchmarks
    and tools use each other's public names (tests may still look inside, to test a helper)."""
    root = SRC.parents[1]
    files = [*SRC.rglob("*.py"), *(root / "benchmarks").rglob("*.py"), *(root / "tools").rglob("*.py")]
    bad = {str(p.relative_to(root)): b for p in files if (b := _private_reach_ins(p))}
    assert not bad, bad


def test_importing_the_demo_leaves_the_environment_alone():
    """The demo switches off gradio's analytics when it starts gradio, not when it is imported."""
    import subprocess
    import sys

    code = "import os; e = dict(os.environ); import nextscale.app.demo; assert dict(os.environ) == e, 'changed'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-500:]


def _flag_texts(path: pathlib.Path):
    """String pieces that spell a CLI flag (``--name``) inside the raise statements and warnings of a file."""
    import re

    out = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Raise) or (
            isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "warn"
        ):
            for c in ast.walk(n):
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and re.search(r"--[a-z]", c.value):
                    out.append(f"{c.lineno}: {c.value.strip()[:60]}")
    return out


def test_training_and_data_errors_name_fields_not_flags():
    """A Python user has no flags: library errors name the field (a FieldError), and the CLI spells it
    as its flag (``batch_size`` -> ``--batch-size``)."""
    files = [*(SRC / "train").rglob("*.py"), SRC / "data.py", SRC / "checkpoint.py", SRC / "atomic.py"]
    bad = {p.name: b for p in files if (b := _flag_texts(p))}
    assert not bad, bad
