"""The package's layers (docs/architecture.md): a subpackage imports only from lower layers."""

import ast
import re
from pathlib import Path

import mambacontrol

LAYERS = {
    "errors": 0, "_version": 0,
    "io": 1, "ops": 1,
    "atlas": 2, "data": 2, "nn": 2,
    "registration": 3, "graph": 3, "models": 3,
    "synth": 4, "pipeline": 4,
    "training": 5, "evaluation": 5,
    "demo": 6, "cli": 7, "__main__": 8, "__init__": 8,
    "testing": 9,  # fixtures for tests and benchmarks: the library never imports them
}
ROOT = Path(mambacontrol.__file__).parent


def _imports(path: Path) -> set[str]:
    """The package's top-level parts that ``path`` imports (``mambacontrol.X...`` → ``X``)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "mambacontrol":
            names.update(a.name for a in node.names if a.name in LAYERS)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mambacontrol."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("mambacontrol."))
    return names


def test_every_module_imports_downwards_only():
    problems = []
    for path in sorted(ROOT.rglob("*.py")):
        part = path.relative_to(ROOT).parts[0].removesuffix(".py")
        assert part in LAYERS, f"{part} has no layer: add it to docs/architecture.md and here"
        for target in _imports(path) - {part}:
            if LAYERS[target] >= LAYERS[part] and part != "__init__":
                problems.append(f"{path.relative_to(ROOT)} (layer {LAYERS[part]}) imports "
                                f"mambacontrol.{target} (layer {LAYERS[target]})")
    assert not problems, "\n".join(problems)


def test_no_library_module_imports_the_test_fixtures():
    importers = [str(path.relative_to(ROOT)) for path in sorted(ROOT.rglob("*.py"))
                 if path.relative_to(ROOT).parts[0] != "testing" and "testing" in _imports(path)]
    assert not importers, f"the library imports mambacontrol.testing: {importers}"


def test_the_layer_picture_names_every_module():
    """docs/architecture.md's layer picture lists each module of a package below the CLI (whose
    modules are one per command), so a new module cannot go unmentioned."""
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    picture = doc.split("## Layers", 1)[1].split("```")[1]
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", picture))
    unnamed = [str(path.relative_to(ROOT)) for path in sorted(ROOT.rglob("*.py"))
               if len(path.relative_to(ROOT).parts) == 2 and path.parent.name != "cli"
               and path.stem != "__init__" and path.stem not in words]
    assert not unnamed, f"not in docs/architecture.md's layer picture: {unnamed}"
