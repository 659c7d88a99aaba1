"""The shape of the package, kept by tests: layers, no import cycles, small modules, one owner per concern.

Layers, top to bottom (a module may import its own layer and the ones below, never above):
commands -> applications -> engine -> model -> inputs -> ground. ``testing`` builds tiny models and data
for tests and demos and may use everything below the applications. See docs/architecture.md.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "libra_cli"

LAYERS = ["ground", "inputs", "model", "engine", "testing", "applications", "commands"]
OWNER = {  # first matching prefix wins
    "libra_cli.commands": "commands", "libra_cli.cli": "commands", "libra_cli.__main__": "commands",
    "libra_cli.batch": "applications", "libra_cli.serve": "applications", "libra_cli.convert": "applications",
    "libra_cli.training": "applications", "libra_cli.demo": "applications", "libra_cli.doctor": "applications", "libra_cli.publish": "applications",
    "libra_cli.testing": "testing",
    "libra_cli.checkpoint": "engine", "libra_cli.generation": "engine", "libra_cli.streaming": "engine",
    "libra_cli.ccd": "engine", "libra_cli.beam_scores": "engine", "libra_cli.vllm_engine": "engine",
    "libra_cli.model": "model",
    "libra_cli.images": "inputs", "libra_cli.prompts": "inputs", "libra_cli.jsonio": "inputs", "libra_cli.urls": "inputs",
    "libra_cli.data": "inputs", "libra_cli.metrics": "inputs",
    "libra_cli.pacs.batch": "applications", "libra_cli.pacs": "inputs",
    "libra_cli.errors": "ground", "libra_cli.atomic": "ground", "libra_cli.console": "ground",
    "libra_cli.paths": "ground", "libra_cli.lazy": "ground",
    "libra_cli": "ground",  # the package root only re-exports lazily
}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


MODS = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every libra_cli module ``name`` imports, function-local imports included."""
    base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                root = ".".join(base.split(".")[: len(base.split(".")) - node.level + 1])
                mod = f"{root}.{mod}" if mod else root
            deps |= {mod} | {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names}
    return {d for d in deps if d in MODS and d != name and not d.startswith(name + ".")}


GRAPH = {n: _imports(n, p) for n, p in MODS.items()}


def _layer(name: str) -> str:
    for prefix, layer in OWNER.items():
        if name == prefix or name.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{name} belongs to no layer; add it to OWNER in {__file__} and docs/architecture.md")


def test_every_module_has_a_layer() -> None:
    for name in MODS:
        _layer(name)


def test_no_module_imports_a_higher_layer() -> None:
    bad = [f"{a} ({_layer(a)}) imports {b} ({_layer(b)})" for a, deps in GRAPH.items() for b in deps
           if LAYERS.index(_layer(b)) > LAYERS.index(_layer(a))]
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    cycles: list[str] = []
    state: dict[str, int] = {}

    def visit(v: str, path: list[str]) -> None:
        state[v] = 1
        for w in sorted(GRAPH[v]):
            if state.get(w) == 1:
                cycles.append(" -> ".join(path[path.index(w):] + [w]))
            elif w not in state:
                visit(w, path + [w])
        state[v] = 2

    for v in sorted(GRAPH):
        if v not in state:
            visit(v, [v])
    assert not cycles, "\n".join(cycles)


def test_modules_are_small_and_long_functions_say_why() -> None:
    too_big = [f"{p.relative_to(PKG.parent)}: {n} lines" for p in MODS.values()
               if (n := len(p.read_text().splitlines())) > 500]
    assert not too_big, "modules over 500 lines:\n" + "\n".join(too_big)
    unexplained = []
    for p in MODS.values():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                doc = ast.get_docstring(node) or ""
                if "Long:" not in doc:
                    unexplained.append(f"{p.relative_to(PKG.parent)}:{node.lineno} {node.name}")
    assert not unexplained, "functions over 80 lines need 'Long: <reason>' in their docstring:\n" + "\n".join(unexplained)


@pytest.mark.parametrize("spelling", ["mm_projector.bin", "non_lora_trainables.bin", "model.mm_projector."])
def test_only_checkpoint_knows_file_layouts(spelling: str) -> None:
    offenders = [str(p.relative_to(PKG.parent)) for n, p in MODS.items()
                 if not n.startswith("libra_cli.checkpoint") and spelling in p.read_text()]
    assert not offenders, f"{spelling!r} spelled outside libra_cli/checkpoint/: {offenders}"


def test_generation_flags_match_generation_settings() -> None:
    from libra_cli.commands.options import GenerationFlags
    from libra_cli.generation import GenerationSettings

    flags = [f.name for f in dataclasses.fields(GenerationFlags)]
    fields = [f.name for f in dataclasses.fields(GenerationSettings)]
    assert sorted(flags) == sorted(fields), "every GenerationSettings field needs its flag in GenerationFlags"
    assert GenerationFlags().settings() == GenerationSettings()  # same defaults


def test_package_init_files_import_nothing_eagerly() -> None:
    """Package __init__ files re-export lazily: importing a package never drags in torch (or a cycle)."""
    assert not GRAPH["libra_cli.lazy"]
    for name, path in MODS.items():
        if path.name == "__init__.py" and name != "libra_cli.model":
            eager = sorted(GRAPH[name] - {"libra_cli.lazy"})  # the lazy-export helper itself imports only stdlib
            assert not eager, f"{path} imports {eager}; re-export lazily instead"


def test_benchmark_helpers_resolve_to_this_repo() -> None:
    """pysbd (RaTEScore) installs a top-level ``benchmarks`` package; ours must win where the scripts import it."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import benchmarks.baseline_images, benchmarks.gpu_suite; "
            "print(benchmarks.__file__)")
    r = subprocess.run([sys.executable, "-c", code, str(PKG.parent)], capture_output=True, text=True, timeout=120,
                       cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(PKG.parent / "benchmarks" / "__init__.py")
