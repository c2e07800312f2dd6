"""The package layout shows the data flow, and imports go one way: each package imports only its own layer and the
layers below it (core -> model -> example/profiles -> evidence -> outcomes -> workflow -> interfaces).

Every import counts, at any level of a module (a function-level import is still a dependency). The few known upward
edges are listed with their reason, and the test fails when one of them disappears (so the list cannot go stale).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS: tuple[tuple[str, frozenset[str]], ...] = (  # lowest first
    ("core", frozenset({"errors", "io", "jsonout", "log", "progress", "defaults", "config", "resources", "dist", "intervals",
                        "results"})),
    ("model", frozenset({"model"})),
    ("example and profiles", frozenset({"example", "profiles"})),
    ("evidence", frozenset({"metrics", "labels", "units", "concepts", "review", "ledger", "provenance"})),
    ("outcomes", frozenset({"adapters", "repair", "gate", "report", "verdict"})),
    ("workflow", frozenset({"workflow", "session", "api"})),
    ("interfaces", frozenset({"cli", "example.demo", "dashboard", "__main__", "__init__"})),
)
KNOWN_UPWARD = {
    ("model", "example"): "the no-argument default generator is the bundled example's checkpoint (model/generator.py)",
    ("model", "adapters"): "load_generator dispatches to the format adapters, imported when called: the adapters build on "
                           "the generator's spec, so a top-level import would be a cycle",
    ("adapters", "repair"): "an adapter writes the cleaned generator in its own format with repair's bake/export",
}


def _module(path: Path, root: Path = ROOT) -> tuple[str, str]:
    """(dotted module name, its package) of a file under artifix/ or dashboard/."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), ".".join(parts[:-1])
    return ".".join(parts), ".".join(parts[:-1])


def _group(module: str) -> str:
    """The layout group of a dotted module: its first package under artifix (the demo apart from the example's model)."""
    parts = module.split(".")
    if parts[0] == "dashboard":
        return "dashboard"
    if len(parts) == 1:
        return "__init__"
    if parts[1] == "example" and len(parts) > 2 and parts[2].startswith("demo"):
        return "example.demo"
    return parts[1]


def _is_module(dotted: str, root: Path = ROOT) -> bool:
    p = root / dotted.replace(".", "/")
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _imported(path: Path, root: Path = ROOT) -> set[str]:
    """Every artifix/dashboard module a file imports, at any level, relative imports resolved."""
    mod, pkg = _module(path, root)
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = pkg.split(".")
            if node.level > 1:
                base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + [node.module] if node.module else base) if node.level else (node.module or "")
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out.update(n for n in names if n.split(".")[0] in ("artifix", "dashboard") and _is_module(n, root) and n != "artifix")
    return out


def _edges(root: Path = ROOT) -> dict[tuple[str, str], str]:
    """{(importing group, imported group): one file that does it} over artifix/ and dashboard/."""
    edges: dict[tuple[str, str], str] = {}
    for top in ("artifix", "dashboard"):
        for p in sorted((root / top).rglob("*.py")):
            a = _group(_module(p, root)[0])
            for m in _imported(p, root):
                b = _group(m)
                if a != b:
                    edges.setdefault((a, b), str(p.relative_to(root)))
    return edges


def _layer_of() -> dict[str, int]:
    return {g: i for i, (_, groups) in enumerate(LAYERS) for g in groups}


def test_every_module_has_a_layer():
    """A new top-level module or package must be placed in a layer (a reviewer then sees where it sits in the flow)."""
    layer = _layer_of()
    groups = {_group(_module(p)[0]) for root in ("artifix", "dashboard") for p in (ROOT / root).rglob("*.py")}
    assert not groups - set(layer), sorted(groups - set(layer))


def test_imports_go_one_way():
    """No package imports a higher layer than its own, apart from the known upward edges (each still present)."""
    layer = _layer_of()
    edges = _edges()
    names = [n for n, _ in LAYERS]
    bad = {f"{a} ({names[layer[a]]}) -> {b} ({names[layer[b]]}) in {where}" for (a, b), where in edges.items()
           if layer.get(b, -1) > layer.get(a, len(LAYERS)) and (a, b) not in KNOWN_UPWARD}
    assert not bad, sorted(bad)
    stale = set(KNOWN_UPWARD) - set(edges)
    assert not stale, f"known upward edges that are gone (remove them from KNOWN_UPWARD): {sorted(stale)}"


def test_layout_checker_sees_violations(tmp_path):
    """The checker itself: an upward import planted in a copy of a core module (a relative one, in a function) is seen."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "artifix", root / "artifix", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "dashboard").mkdir()
    assert ("io", "workflow") not in _edges(root)
    io_py = root / "artifix" / "io.py"
    io_py.write_text(io_py.read_text() + "\n\ndef _planted():\n    from . import workflow\n")
    assert _edges(root)[("io", "workflow")] == "artifix/io.py"


def test_generic_modules_do_not_special_case_the_example():
    """The example is one profile: generic modules neither name its factory string nor import its package."""
    generic = ["concepts/segmenter.py", "metrics", "provenance.py", "session.py", "gate", "cli/commands", "workflow.py"]
    for name in generic:
        p = ROOT / "artifix" / name
        for f in ([p] if p.is_file() else sorted(p.rglob("*.py"))):
            assert "artifix.example:make_generator" not in f.read_text(), f
            assert not {m for m in _imported(f) if _group(m) == "example"}, f  # the demo command may run the demo script
    assert "artifix.example:make_generator" not in (ROOT / "dashboard" / "state.py").read_text()


def test_the_command_handlers_do_not_import_the_entry_point():
    """Handlers register with the registry, never with the entry point: no cli.main <-> commands cycle."""
    for p in sorted((ROOT / "artifix" / "cli" / "commands").glob("*.py")):
        assert "artifix.cli.main" not in _imported(p), p
    assert not {m for m in _imported(ROOT / "artifix" / "cli" / "registry.py") if m.startswith(("artifix.cli.main", "artifix.cli.commands"))}


def test_the_wheel_lists_every_package():
    """pyproject names every package directory, so a new subpackage ships in the wheel (a missing one fails on import)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "artifix").rglob("__init__.py")}
    assert on_disk - listed == set(), f"add these to [tool.setuptools] packages in pyproject.toml: {sorted(on_disk - listed)}"
    assert {p for p in listed if p.startswith("artifix.") and p not in ("artifix.dashboard", "artifix.example_data")} <= on_disk


def test_no_function_over_80_lines_and_no_module_over_600():
    """Small modules, short functions, in the library and the dashboard (blank lines and docstrings count)."""
    long = []
    for p in sorted([*(ROOT / "artifix").rglob("*.py"), *(ROOT / "dashboard").rglob("*.py")]):
        text = p.read_text()
        rel = p.relative_to(ROOT).as_posix()
        if len(text.splitlines()) > 600:
            long.append(f"{rel}: {len(text.splitlines())} lines")
        for f in ast.walk(ast.parse(text)):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.end_lineno - f.lineno >= 80:
                long.append(f"{rel}:{f.lineno} {f.name}: {f.end_lineno - f.lineno + 1} lines")
    assert not long, long


def _unexplained_function_imports(path: Path) -> list[int]:
    """Line numbers of imports inside a function with no reason in a comment on that line or the line above."""
    lines = path.read_text().splitlines()
    found = []
    for f in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(f):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    here, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
                    if "#" not in here and not above.startswith("#"):
                        found.append(node.lineno)
    return sorted(set(found))


def test_imports_are_at_the_top_unless_a_comment_says_why(tmp_path):
    """A function-level import is an exception (optional dependency, a cycle, a startup cost) and says which."""
    bad = {p.relative_to(ROOT).as_posix(): lines for p in sorted([*(ROOT / "artifix").rglob("*.py"), *(ROOT / "dashboard").rglob("*.py")])
           if (lines := _unexplained_function_imports(p))}
    assert bad == {}, f"move these imports to the top of the module, or say why they cannot be: {bad}"
    probe = tmp_path / "m.py"
    probe.write_text("import os\n\ndef f():\n    import json\n    return json\n\ndef g():\n    import csv  # optional\n    return csv\n")
    assert _unexplained_function_imports(probe) == [4]
