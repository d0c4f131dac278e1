"""The plugin's code is written for Qt5 and Qt6 alike (QGIS 3.22 to 4.x): every enum member is reached
through its enum (`Qt.AlignmentFlag.AlignLeft`, `QgsTask.Flag.CanCancel`) — PyQt6 and QGIS's Qt6
bindings have no unscoped names — and no name Qt6 removed is used (`exec_`, `QRegExp`, …).

Checked on the plugin's source with this QGIS's own bindings: each `Class.NAME` written in the code is
looked up, and a NAME that is an enum member reached from its class (not its enum) is named with the
spelling to use. QGIS on Qt6 puts `QVariant.String` and its siblings back for QgsField, so those stay.
"""

from __future__ import annotations

import ast
import enum
import importlib
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "qgis_farslip"

# names Qt6/PyQt6 removed, and what to write instead
REMOVED = {"exec_": "exec()", "QRegExp": "QRegularExpression", "QDesktopWidget": "QScreen", "MidButton": "MiddleButton",
           "setResizeMode": "setSectionResizeMode"}
QVARIANT_TYPES_KEPT = "QVariant"  # QGIS's Qt6 bindings alias QVariant.String etc. to QMetaType for QgsField


def _sources() -> list[Path]:
    return sorted(p for p in PLUGIN.rglob("*.py") if "__pycache__" not in p.parts)


def _imported_names(tree: ast.AST) -> dict[str, object]:
    """The Qt and QGIS names a file imports (anywhere in it), resolved in this QGIS."""
    names: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("qgis", "PyQt5"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if value is not None:
                    names[alias.asname or alias.name] = value
    return names


def _is_enum_member(value: object) -> bool:
    kind = type(value)
    return isinstance(value, enum.Enum) or type(kind).__name__ == "enumtype"


def _chain(node: ast.Attribute) -> list[str] | None:
    """`A.B.C` as ["A", "B", "C"]; None when it does not start at a plain name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _unscoped(source: str, where: str) -> list[str]:
    """`where:line: spelling -> the spelling to use` for each enum member `source` reaches unscoped."""
    tree = ast.parse(source)
    names = _imported_names(tree)
    found = []
    for node in ast.walk(tree):
        chain = _chain(node) if isinstance(node, ast.Attribute) else None
        if chain is None or chain[0] not in names or chain[0] == QVARIANT_TYPES_KEPT:
            continue
        owner = names[chain[0]]
        for part in chain[1:-1]:
            owner = getattr(owner, part, None)
        value = getattr(owner, chain[-1], None)
        if value is None or not _is_enum_member(value) or owner is type(value):
            continue
        found.append(f"{where}:{node.lineno}: {'.'.join(chain)} -> "
                     f"{'.'.join(chain[:-1])}.{type(value).__name__.split('.')[-1]}.{chain[-1]}")
    return found


def test_enum_members_are_reached_through_their_enum(qgis_app):
    found = [line for path in _sources()
             for line in _unscoped(path.read_text(encoding="utf-8"), str(path.relative_to(PLUGIN.parent)))]
    assert not found, "unscoped enum members (PyQt6 has none):\n" + "\n".join(found)


def test_the_check_finds_unscoped_members_of_qt_and_qgis(qgis_app):
    source = ("from qgis.PyQt.QtCore import Qt\nfrom qgis.core import QgsTask\n"
              "a = Qt.AlignLeft\nb = Qt.AlignmentFlag.AlignLeft\nc = QgsTask.CanCancel\nd = QgsTask.Flag.CanCancel\n")
    assert [line.split(" -> ")[0] for line in _unscoped(source, "x")] == ["x:3: Qt.AlignLeft", "x:5: QgsTask.CanCancel"]


@pytest.mark.parametrize("name", sorted(REMOVED))
def test_no_name_qt6_removed(name):
    used = [f"{p.relative_to(PLUGIN.parent)}:{n}" for p in _sources()
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if name in line]
    assert not used, f"{name} is gone in Qt6 (use {REMOVED[name]}): {', '.join(used)}"
