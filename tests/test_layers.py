"""The package's layout is its data flow (docs/architecture.md): the foundation, the stages
in the order papers go through them, the machinery that runs them, the entry points. A
module imports only from its own layer or earlier ones, and no imports go round in a
cycle, counting imports inside functions (those under `if TYPE_CHECKING:` run never)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "digest"

# In order: a module may import from its own layer and the layers before it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("digest", "digest.config", "digest.models", "digest.errors",
                    "digest.identity", "digest.reading", "digest.background",
                    "digest.progress")),
    ("store", ("digest.store",)),
    ("ingest", ("digest.ingest",)),
    ("profiles", ("digest.profiles", "digest.profilecache", "digest.schedule",
                  "digest.library")),
    ("rank", ("digest.rank", "digest.embed")),
    ("render", ("digest.render", "digest.tokens", "digest.signing")),
    ("deliver", ("digest.deliver", "digest.ratelimit")),
    ("running", ("digest.running",)),
    ("entry points", ("digest.commands", "digest.__main__")),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if "migrations" in parts or "data" in parts:  # Alembic's scripts; shipped data
            continue
        name = ".".join(parts).removesuffix(".__init__")
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports when it runs (at the top or in a
    function); `from package import module` counts as the module, not the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    typing_only = {id(inner) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for statement in node.body for inner in ast.walk(statement)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            submodules = {f"{source}.{alias.name}" for alias in node.names} & modules.keys()
            found |= submodules or ({source} & modules.keys())
    found.discard(name)
    return found


def _layer(name: str) -> int:
    best = -1, -1  # (index, length of the matching prefix): the longest prefix wins
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best[1]:
                best = index, len(prefix)
    assert best[0] >= 0, f"{name} is in no layer: add it to LAYERS and docs/architecture.md"
    return best[0]


def test_every_module_imports_only_from_its_layer_or_earlier():
    modules = _modules()
    wrong = []
    for name, path in sorted(modules.items()):
        for imported in sorted(_imports(name, path, modules)):
            if _layer(imported) > _layer(name):
                wrong.append(f"{name} ({LAYERS[_layer(name)][0]}) imports {imported} "
                             f"({LAYERS[_layer(imported)][0]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    cycles = []
    for start in sorted(graph):
        seen: set[str] = set()
        stack = list(graph[start])
        while stack:
            current = stack.pop()
            if current == start:
                cycles.append(start)
                break
            if current not in seen:
                seen.add(current)
                stack.extend(graph[current])
    assert not cycles, f"modules in an import cycle: {cycles}"


def test_the_checks_see_imports_inside_functions_and_catch_a_cycle(tmp_path):
    """The two checks above would catch what they are for: a function-level import that
    closes a cycle, and one that reaches a later layer."""
    (tmp_path / "a.py").write_text("def f():\n    from digest.commands import cli\n")
    modules = {"digest.config": tmp_path / "a.py", "digest.commands.cli": tmp_path / "a.py"}
    assert _imports("digest.config", tmp_path / "a.py", modules) == {"digest.commands.cli"}
    assert _layer("digest.commands.cli") > _layer("digest.config")
    assert _layer("digest.store.store") == 1 and _layer("digest.running.editions") == 7
