"""Attribute fields of the layers the plugin writes, made as each QGIS wants them: with a QMetaType type
from QGIS 3.38 on (its QVariant.Type constructor is deprecated there, and QGIS 4 on Qt 6 knows QMetaType
only), with a QVariant.Type before (QGIS 3.22 to 3.36 take nothing else)."""

from __future__ import annotations

from qgis.core import Qgis, QgsField
from qgis.PyQt.QtCore import QMetaType, QVariant

_METATYPE_FIELDS = Qgis.QGIS_VERSION_INT >= 33800


def text_field(name: str) -> QgsField:
    return QgsField(name, QMetaType.Type.QString if _METATYPE_FIELDS else QVariant.String)


def real_field(name: str) -> QgsField:
    return QgsField(name, QMetaType.Type.Double if _METATYPE_FIELDS else QVariant.Double)
