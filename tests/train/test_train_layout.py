"""How train/ reads: small files, no state hung on other libraries' objects, the artifact outside training."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "lorafleet"


def test_train_files_stay_small():
    sizes = {p.relative_to(SRC).as_posix(): len(p.read_text().splitlines()) for p in (SRC / "train").rglob("*.py")}
    assert max(sizes.values()) <= 300, {k: v for k, v in sizes.items() if v > 300}


def test_no_lorafleet_attributes_on_other_libraries_objects():
    hits = [p for p in SRC.rglob("*.py") if "_lorafleet_" in p.read_text()]
    assert not hits, hits


def test_registry_does_not_import_training():
    for path in (SRC / "registry").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("lorafleet.train") for n in names), (path, names)
