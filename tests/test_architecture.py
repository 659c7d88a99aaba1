"""The shape of the package, kept by tests: layers, no import cycles, small modules, one owner per concern,
one seam for every engine, environment variables at the CLI boundary, each setting defined once.

Layers, top to bottom (a module may import its own layer and the ones below, never above):
commands -> applications -> engine -> model -> inputs -> ground. See docs/architecture.md.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "libra_cli"

LAYERS = ["ground", "inputs", "model", "engine", "applications", "commands"]
OWNER = {  # first matching prefix wins
    "libra_cli.commands": "commands", "libra_cli.cli": "commands", "libra_cli.__main__": "commands",
    "libra_cli.batch": "applications", "libra_cli.serve": "applications", "libra_cli.convert": "applications",
    "libra_cli.training": "applications", "libra_cli.demo": "applications", "libra_cli.doctor": "applications", "libra_cli.publish": "applications",
    # where files come from (the hub, and the names it fetches): below the metrics, which download through it
    "libra_cli.checkpoint.hub": "inputs", "libra_cli.checkpoint.files": "inputs",
    "libra_cli.checkpoint": "engine", "libra_cli.generation": "engine", "libra_cli.streaming": "engine",
    "libra_cli.requests": "engine", "libra_cli.engines": "engine",
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


def test_flags_are_the_settings() -> None:
    """The flag groups that mirror settings are generated from them: same names, same defaults, same help."""
    from libra_cli.commands.options import EngineFlags, GenerationFlags, ModelFlags
    from libra_cli.requests import CCDSettings, GenerationSettings, ModelSpec
    from libra_cli.vllm_engine.options import VllmOptions

    flags = [f.name for f in dataclasses.fields(GenerationFlags)]
    fields = [f.name for f in dataclasses.fields(GenerationSettings) if f.name != "ccd"]
    fields += [f"ccd_{f.name}" for f in dataclasses.fields(CCDSettings)]
    assert flags == fields, "every GenerationSettings field is a flag of GenerationFlags"
    assert GenerationFlags().settings() == GenerationSettings()  # same defaults
    assert ModelFlags().spec() == ModelSpec()
    assert [f.name for f in dataclasses.fields(ModelFlags)] == [f.name for f in dataclasses.fields(ModelSpec)]
    assert EngineFlags().vllm_options() == VllmOptions()
    flagged = [f.name for f in dataclasses.fields(VllmOptions) if "help" in f.metadata]
    assert [f.name for f in dataclasses.fields(EngineFlags)] == ["engine", *flagged]


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


# ---------------------------------------------------------------------------------- the engine seam

ENGINE_PACKAGES = {  # each engine's own implementation packages: no other engine may reach them
    "libra_cli.engines.hf": (),
    "libra_cli.engines.ccd": ("libra_cli.ccd",),
    "libra_cli.engines.vllm": ("libra_cli.vllm_engine",),
    "libra_cli.engines.remote": (),
}


def _closure(name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dep in GRAPH[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_every_registered_engine_is_in_the_seam_test() -> None:
    from libra_cli.engines.registry import ENGINES

    assert sorted(v.split(":")[0] for v in ENGINES.values()) == sorted(ENGINE_PACKAGES)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_no_engine_imports_another_engine() -> None:
    """Engines share ``libra_cli.requests`` and ``engines.base``; none reaches another (directly or not)."""
    bad = []
    for engine, own in ENGINE_PACKAGES.items():
        others = tuple(e for e in ENGINE_PACKAGES if e != engine)
        others += tuple(p for e, pkgs in ENGINE_PACKAGES.items() if e != engine for p in pkgs)
        bad += [f"{engine} reaches {dep}" for dep in sorted(_closure(engine)) if _under(dep, others)]
        for pkg in own:  # an engine's implementation does not reach back into the engines
            bad += [f"{mod} imports {dep}" for mod in MODS if _under(mod, (pkg,))
                    for dep in GRAPH[mod] if _under(dep, ("libra_cli.engines",))]
    for shared in ("libra_cli.engines.base", "libra_cli.engines.registry", "libra_cli.requests"):
        bad += [f"{shared} reaches {dep}" for dep in _closure(shared) if dep in ENGINE_PACKAGES]
    assert not bad, "\n".join(bad)


def _classes() -> dict[str, tuple[str, ast.ClassDef]]:
    out = {}
    for name, path in MODS.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                out[f"{name}.{node.name}"] = (name, node)
    return out


def _base_names(node: ast.ClassDef) -> list[str]:
    return [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases]


def test_no_subclass_of_a_concrete_runner_or_engine() -> None:
    """Engines are peers (no implementation inheritance), and nothing extends a runner or an engine: a
    difference is a parameter or a peer, never an override of private methods."""
    from libra_cli.engines.registry import ENGINES

    classes = _classes()
    engines = {v.replace(":", ".") for v in ENGINES.values()}
    for qual in engines:
        assert qual in classes, f"registered engine {qual} not found"
        assert not classes[qual][1].bases, f"{qual} inherits; engines keep the Protocol without a base class"
    concrete = {node.name for qual, (mod, node) in classes.items()
                if _under(mod, ("libra_cli.engines", "libra_cli.batch", "libra_cli.serve"))
                and "Protocol" not in _base_names(node) and not node.name.endswith(("Error", "Exception"))}
    concrete |= {q.rsplit(".", 1)[1] for q in engines}
    bad = [f"{qual} extends {b}" for qual, (_, node) in classes.items() for b in _base_names(node) if b in concrete]
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------------------- the environment

_ENV_WRITES = {"setdefault", "update", "pop", "popitem", "clear", "__setitem__", "__delitem__"}


def _environ_writes(tree: ast.AST) -> list[int]:
    def is_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name) \
            and node.value.id == "os"

    lines = []
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        if any(isinstance(t, ast.Subscript) and is_environ(t.value) for t in targets):
            lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if (f.attr in _ENV_WRITES and is_environ(f.value)) or (
                    f.attr in ("putenv", "unsetenv") and isinstance(f.value, ast.Name) and f.value.id == "os"):
                lines.append(node.lineno)
    return lines


def test_no_module_below_commands_writes_os_environ() -> None:
    """Settings travel as parameters; only the CLI boundary sets what third-party libraries read."""
    bad = [f"{p.relative_to(PKG.parent)}:{line}" for n, p in MODS.items() if _layer(n) != "commands"
           for line in _environ_writes(ast.parse(p.read_text()))]
    assert not bad, "os.environ written below libra_cli/commands/:\n" + "\n".join(bad)
    assert _environ_writes(ast.parse("import os\nos.environ['X'] = '1'\nos.environ.setdefault('Y', '')"))  # sees it


# the LIBRA_* variables that modules below the CLI read: user settings documented in README.md, never wires
# between modules (LIBRA_QUIET, LIBRA_NO_DEVICE_MAP were; the decode-loop knobs are read in commands/options.py)
USER_VARIABLES = {"LIBRA_DEBUG", "LIBRA_URL_TIMEOUT", "LIBRA_URL_MAX_MB", "LIBRA_MAX_IMAGE_PIXELS",
                  "LIBRA_IMAGE_CACHE_MB", "LIBRA_CACHE", "LIBRA_TORCH",
                  # DICOMweb credentials and deadline (docs/pacs.md): the Python API reads them too, like a client library
                  "LIBRA_DICOMWEB_TOKEN", "LIBRA_DICOMWEB_USER", "LIBRA_DICOMWEB_PASSWORD", "LIBRA_DICOMWEB_TIMEOUT",
                  # the memory pre-flight's off switch (README), for any caller of load_model
                  "LIBRA_MEMORY_CHECK"}


def test_libra_variables_are_read_at_the_cli_boundary() -> None:
    found = {}
    for n, p in MODS.items():
        if _layer(n) == "commands":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"LIBRA_[A-Z_]+", node.value):
                found.setdefault(node.value, []).append(f"{p.relative_to(PKG.parent)}:{node.lineno}")
    wires = {k: v for k, v in found.items() if k not in USER_VARIABLES}
    assert not wires, f"LIBRA_* variables read below libra_cli/commands/ (pass them as parameters): {wires}"


# ---------------------------------------------------------------------------------- one definition each

def _settings_defaults() -> dict[str, object]:
    """Every setting's name and default: the decoding, CCD, model and vLLM settings."""
    from libra_cli.requests import CCDSettings, GenerationSettings, ModelSpec
    from libra_cli.vllm_engine.options import VllmOptions

    out: dict[str, object] = {}
    for cls in (GenerationSettings, CCDSettings, ModelSpec, VllmOptions):
        for f in dataclasses.fields(cls):
            if "help" in f.metadata and f.default is not dataclasses.MISSING:
                out[f.name] = f.default
                if cls is CCDSettings:
                    out[f"ccd_{f.name}"] = f.default
    return out


SETTINGS_HOMES = {"libra_cli.requests", "libra_cli.vllm_engine.options"}


def test_each_setting_has_one_definition() -> None:
    """A setting's default is written once (flags, the page, CCD's scorer and vLLM's flags are generated
    from or handed the settings); the image placeholder id has one value (``config.image_token_id``);
    which metrics are lower-is-better is the metrics registry's."""
    settings = _settings_defaults()
    bad = []
    for name, path in MODS.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            # a dataclass-style field or a function parameter re-declaring a setting with the same default
            if name not in SETTINGS_HOMES and isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) \
                            and stmt.target.id in settings and isinstance(stmt.value, ast.Constant) \
                            and stmt.value.value == settings[stmt.target.id] \
                            and stmt.value.value not in (None, False, 0, ""):  # "off" is no definition
                        bad.append(f"{path.relative_to(PKG.parent)}:{stmt.lineno} {node.name}.{stmt.target.id}")
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
                    and node.operand.value == 200 and name != "libra_cli.prompts":
                bad.append(f"{path.relative_to(PKG.parent)}:{node.lineno} -200 (the image placeholder: prompts.IMAGE_TOKEN_INDEX)")
            if isinstance(node, ast.Constant) and node.value == "RadCliQ-v1" and not name.startswith("libra_cli.metrics"):
                bad.append(f"{path.relative_to(PKG.parent)}:{node.lineno} RadCliQ-v1 (metrics.registry owns it)")
    assert not bad, "settings defined twice:\n" + "\n".join(bad)


def test_hub_access_only_through_checkpoint_hub() -> None:
    """Only checkpoint/hub.py talks to the Hugging Face hub (console only silences its progress bars)."""
    bad = []
    for name, path in MODS.items():
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for m in mods:
                if m.split(".")[0] == "huggingface_hub" and name != "libra_cli.checkpoint.hub" \
                        and not (name == "libra_cli.console" and m == "huggingface_hub.utils"):
                    bad.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {m}")
    assert not bad, "\n".join(bad)


def test_test_builders_are_not_in_the_package() -> None:
    """Tiny models and synthetic data are test material (tests/builders): the wheel ships none of it."""
    assert not (PKG / "testing").exists()
    assert not [n for n in MODS if "testing" in n.split(".")]
