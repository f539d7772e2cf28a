"""The import structure of ``src/pclab``: no circles among pclab's modules, and no private name
(a leading underscore) imported from another module. Read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's ``__init__``) of every module under ``src/pclab``."""
    out = {}
    for path in sorted((SRC / "pclab").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def imports(name: str, path: Path, package: bool, known: set[str]) -> list[tuple[str, str | None]]:
    """``(imported pclab module, imported name or None)`` of every import statement in ``path``,
    at any depth (imports inside functions count too)."""
    here = name.split(".") if package else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "pclab"]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) if node.level else node.module
            if base is None or base.split(".")[0] != "pclab":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full, None) if full in known else (base, alias.name))
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {target for target, _ in imports(name, path, package, set(mods))} for name, (path, package) in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_checker_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_in_src():
    edges = graph()
    assert "pclab.core.fast.dispatch" in edges["pclab.core.relax"]  # the checker sees relative imports
    assert find_cycle(edges) is None, f"import circle: {' -> '.join(find_cycle(edges))}"


def test_no_private_name_is_imported_across_modules():
    mods = modules()
    private = []
    for name, (path, package) in mods.items():
        for module, imported in imports(name, path, package, set(mods)):
            if imported is not None and imported.startswith("_") and not imported.startswith("__"):
                private.append(f"{name} imports {imported} from {module}")
    assert not private, "\n".join(private)


def test_the_core_imports_nothing_else_of_pclab():
    outside = {f"{name} -> {t}" for name, targets in graph().items() if name.startswith("pclab.core")
               for t in targets if not t.startswith("pclab.core")}
    assert not outside, sorted(outside)
