"""The import direction ARCHITECTURE.md promises: the library never imports its applications."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "smolvla"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_library_imports_no_app():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if "apps" in path.relative_to(SRC).parts:
            continue
        bad = sorted(
            m for m in imported_modules(path) if m == "smolvla.apps" or m.startswith("smolvla.apps.")
        )
        if bad:
            offenders.append(f"{path.relative_to(SRC)}: {bad}")
    assert not offenders, "library modules import apps:\n" + "\n".join(offenders)


# ARCHITECTURE.md's layers, bottom first: a module imports only from layers below its own.
LAYERS = [
    {"errors"},
    {"io", "hub", "hardware", "stats_check"},
    {"config"},
    {"checkpoint", "flow"},
    {"model", "processing", "data"},
    {"policy", "envs"},
    {"runtime"},
    {"eval", "serving"},
    {"train"},
    {"apps"},
]


def unit(path: Path) -> str:
    """The package (or top-level module) a source file belongs to: `model`, `config`, ..."""
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def test_imports_go_down_the_layers():
    layer = {u: i for i, us in enumerate(LAYERS) for u in us}
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        u = unit(path)
        if u == "__init__":
            continue
        assert u in layer, f"{u}: not in ARCHITECTURE.md's layers (add it to LAYERS and the page)"
        for m in imported_modules(path):
            parts = m.split(".")
            if parts[0] != "smolvla" or len(parts) < 2 or parts[1] == u or parts[1] not in layer:
                continue
            if layer[parts[1]] >= layer[u]:
                offenders.append(f"{path.relative_to(SRC)} imports {m}")
    assert not offenders, "imports that go up or sideways:\n" + "\n".join(sorted(set(offenders)))


def test_the_check_sees_an_app_import(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("from smolvla.apps.cli import main\nimport smolvla.apps.bench\n")
    assert {"smolvla.apps.cli", "smolvla.apps.bench"} <= imported_modules(p)


def test_every_error_class_derives_from_the_one_base():
    from smolvla.errors import SmolVLAError

    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                bases = {b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases}
                if (
                    not bases & {"SmolVLAError", "DatasetError", "ProtocolError"}
                    and node.name != "SmolVLAError"
                ):
                    offenders.append(f"{path.relative_to(SRC)}: {node.name}({', '.join(sorted(bases))})")
    assert not offenders, offenders
    assert issubclass(__import__("smolvla.data.errors", fromlist=["VideoError"]).VideoError, SmolVLAError)
