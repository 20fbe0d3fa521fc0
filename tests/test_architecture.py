"""The package import arrows of docs/architecture.md, checked on the source (AST), lazy imports included.

Every `import x` / `from x import y` anywhere in a module (top level, inside functions, under TYPE_CHECKING)
counts: a lazy import is still an arrow. The rules are a whitelist per layer; `longscale` (the root package,
which imports nothing) and `longscale.common` (the leaf of shared helpers) are importable from everywhere,
`longscale.commands` only from itself.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# layer -> the layers it may import (besides itself). Keep in step with docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "longscale.common": set(),
    "datafactory": {"longscale.common"},
    "worker": {"datafactory", "longscale.common"},
    "api": {"worker", "datafactory", "longscale.common"},
    "pretrain": {"longscale.common"},
    "finetune": {"pretrain", "longscale.common"},
    "evaluation": {"datafactory", "longscale.common"},
    "longscale.commands": {"datafactory", "worker", "api", "pretrain", "finetune", "evaluation", "longscale.common"},
}
EVERYONE_MAY_IMPORT = {"longscale"}  # the root package: a docstring and __version__, nothing else
LIBRARY_LAYERS = [layer for layer in ALLOWED if layer != "longscale.commands"]


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to (the longest matching prefix), or None if not ours. A module
    beside the root package's __init__ (longscale/cli.py, the console-script shim that re-exports
    longscale.commands.main) is on the commands side: a library importing it imports every command."""
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    if module.startswith("longscale."):
        head = module.split(".")[1]
        is_module = (REPO / "longscale" / f"{head}.py").exists() or (REPO / "longscale" / head).is_dir()
        return "longscale.commands" if is_module else "longscale"  # else an attribute: longscale.__version__
    return "longscale" if module == "longscale" else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` may name a submodule: check the names as modules of `base` too
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def violations(path: Path, name: str | None = None) -> list[str]:
    """The wrong-way imports of one source file (module `name`), as `file:line: a -> b (not allowed ...)`."""
    own = layer_of(name or module_name(path))
    if own is None or own == "longscale":
        return []
    allowed = ALLOWED[own] | {own} | EVERYONE_MAY_IMPORT
    bad: dict[tuple[int, str], str] = {}
    for line, target in imported_modules(path, name):
        target_layer = layer_of(target)
        if target_layer is None or target_layer in allowed or (line, target_layer) in bad:
            continue
        bad[(line, target_layer)] = (f"{path.name}:{line}: {own} -> {target} (not allowed: {own} may import "
                                     f"{', '.join(sorted(ALLOWED[own])) or 'nothing of ours'})")
    return list(bad.values())


def source_files(layer: str) -> list[Path]:
    return sorted((REPO / layer.replace(".", "/")).rglob("*.py"))


@pytest.mark.parametrize("layer", list(ALLOWED))
def test_imports_follow_the_arrows(layer: str) -> None:
    files = source_files(layer)
    assert files, f"no sources found for {layer}"
    bad = [v for f in files for v in violations(f)]
    assert not bad, "wrong-way imports:\n" + "\n".join(bad)


def test_root_package_imports_nothing() -> None:
    assert imported_modules(REPO / "longscale" / "__init__.py") == []


def test_every_package_is_covered() -> None:
    """A new top-level package must get a rule here (and an arrow in docs/architecture.md)."""
    ours = {p.parent.name for p in REPO.glob("*/__init__.py")} | {"longscale.common", "longscale.commands"}
    ours -= {"tests", "benchmarks", "experiments", "longscale"}
    assert ours == set(ALLOWED), f"packages without a rule: {sorted(ours - set(ALLOWED))}"


def test_the_check_catches_lazy_and_relative_wrong_way_imports(tmp_path: Path) -> None:
    """The checker itself, on a probe module named as if it lived in datafactory/engines/."""
    probe = tmp_path / "probe.py"
    probe.write_text("from ..output import OutputWriter\nfrom longscale.common import errors\n"
                     "from longscale import __version__\n\n"
                     "def f():\n    from longscale.commands.generate import generate\n    import worker.tasks\n"
                     "    from longscale.cli import main\n")
    bad = violations(probe, "datafactory.engines.probe")
    assert [b.split(": ")[1].split(" (")[0] for b in bad] == [
        "datafactory -> longscale.commands.generate", "datafactory -> worker.tasks", "datafactory -> longscale.cli"], bad
