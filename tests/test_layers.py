"""The package layering of docs/architecture.md: a module imports only its own package and the
packages of lower layers. Read from the source (every import, at module top or in a function)."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "moefusion"

# Lowest first. Packages on one layer do not import each other; a module imports its own package freely.
LAYERS: list[set[str]] = [
    {"errors", "_version"},
    {"files"},
    {"data"},
    {"model"},
    {"eval", "kernels"},
    {"runtime"},
    {"calibration"},
    {"export"},
    {"<top>"},  # moefusion/__init__.py: load() and build_model()
    {"<commands>"},  # every command-line front end: */cli.py, */__main__.py, fuse.py, and bench/, train/
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
COMMAND_PACKAGES = {"bench", "train", "fuse"}


def _unit(module: str) -> tuple[str, int]:
    """(package, layer): moefusion.runtime.capture -> runtime; moefusion -> <top>; moefusion.eval.cli -> eval
    on the commands' layer (a front end may use every layer; its package's library may not use it)."""
    parts = module.split(".")
    package = parts[1] if len(parts) > 1 else "<top>"
    if package in COMMAND_PACKAGES or parts[-1] in ("cli", "__main__"):
        return package, LAYER_OF["<commands>"]
    return package, LAYER_OF.get(package, -1)


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path):
    """(line, imported module) for every moefusion import in ``path``."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                # "from . import files" names a module, not an attribute
                names = [f"{target}.{a.name}" if not node.module else target for a in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "moefusion" or name.startswith("moefusion."):
                yield node.lineno, name


def upward_imports(root: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        src, src_layer = _unit(_module_name(path, root))
        if src_layer < 0:
            problems.append(f"{path.relative_to(root.parent)}: package {src!r} has no layer in LAYERS")
            continue
        for line, target in sorted(set(_imports(path, root))):
            dst, dst_layer = _unit(target)
            if dst == src and not (dst_layer == LAYER_OF["<commands>"] > src_layer):
                continue  # own package, unless a library module uses its package's command
            if src_layer == LAYER_OF["<commands>"] and dst_layer >= 0:
                continue  # a front end may import anything (moefusion-eval --heldout reads training configs)
            if dst_layer >= src_layer or dst_layer < 0:
                problems.append(f"{path.relative_to(root.parent)}:{line}: {src} (layer {src_layer}) imports "
                                f"{target} ({dst}, layer {dst_layer})")
    return problems


def test_packages_import_only_downwards():
    assert upward_imports() == []


@pytest.mark.parametrize("file, line", [
    ("model/checkpoint.py", "from ..runtime.backends import open_model_file\n"),  # the cycle issue 20 removed
    ("data/io.py", "import moefusion\n"),  # the top package is the highest layer
    ("eval/metrics.py", "from moefusion.kernels import reference\n"),  # a peer on the same layer
    ("runtime/pipeline.py", "from .cli import main\n"),  # a library module using a command (relative)
    ("export/api.py", "from ..runtime.cli import main\n"),  # ... or another package's command
])
def test_an_injected_upward_import_is_caught(tmp_path, file, line):
    copy = tmp_path / "moefusion"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "weights", "*.so"))
    target = copy / file
    before = set(upward_imports(copy))
    target.write_text(target.read_text() + "\n\ndef _injected():\n    " + line)
    new = set(upward_imports(copy)) - before
    assert len(new) == 1 and next(iter(new)).startswith(f"moefusion/{file}:"), new


def test_the_layer_picture_in_the_docs_names_every_package():
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for path in PACKAGE.iterdir():
        if path.is_dir() and (path / "__init__.py").exists():
            assert f"{path.name}/" in doc or f"`{path.name}`" in doc, f"docs/architecture.md does not place {path.name}"
