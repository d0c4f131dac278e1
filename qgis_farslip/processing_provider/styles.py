"""Styles for the layers Processing loads: class colours and names on class rasters, grids and labelled
regions, a colour ramp on heat maps and on each class's score band, outlined search boxes. Applied by a
post-processor once Processing has loaded the layer (kept alive here: Processing drops the algorithm)."""

from __future__ import annotations

from pathlib import Path

from qgis.core import (QgsFillSymbol, QgsProcessingContext,
                       QgsProcessingLayerPostProcessorInterface, QgsSingleSymbolRenderer,
                       QgsStyle)

from qgis_farslip.layers import class_raster_layer, polygon_layer, score_layer

_LIVE: list = []


class _Style(QgsProcessingLayerPostProcessorInterface):
    def __init__(self, apply):
        super().__init__()
        self.apply = apply

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        self.apply(layer)
        layer.triggerRepaint()
        move_to_top(layer, context.project())


def move_to_top(layer, project) -> None:
    """Put a loaded output at the top of the Layers panel (under the labels layer, which stays first), so
    it is not hidden under an earlier opaque class raster."""
    from qgis_farslip.labelling import LABELS_LAYER

    if project is None:
        return
    root = project.layerTreeRoot()
    node = root.findLayer(layer.id())
    if node is None:
        return
    parent = node.parent()
    clone = node.clone()
    on_top = sum(1 for child in root.children() if child.name() == LABELS_LAYER)
    root.insertChildNode(min(on_top, len(root.children())), clone)
    parent.removeChildNode(node)


def load_styled(context: QgsProcessingContext, path: str, name: str, output: str, apply) -> None:
    """Load `path` when the algorithm finishes, named `name`, styled by `apply(layer)`."""
    if context.project() is None:
        return
    details = QgsProcessingContext.LayerDetails(name, context.project(), output)
    style = _Style(apply)
    _LIVE.append(style)
    del _LIVE[:-50]
    details.setPostProcessor(style)
    context.addLayerToLoadOnCompletion(path, details)


def _copy_renderer(layer, styled) -> None:
    layer.setRenderer(styled.renderer().clone())  # `styled` stays alive until its renderer is copied


def classes_raster(classes: list[dict]):
    return lambda layer: _copy_renderer(layer, class_raster_layer(Path(layer.source()), layer.name(), classes))


def categorized(classes: list[dict], layer_name: str, field: str = "class"):
    def apply(layer):
        _copy_renderer(layer, polygon_layer(Path(layer.source().split("|")[0]), layer.name(), classes, layer_name,
                                            field))
    return apply


def categorized_memory(classes: list[dict], field: str):
    """For a layer of any provider (e.g. a Processing sink): categories on `field` in class colours."""
    from qgis.core import QgsCategorizedSymbolRenderer, QgsRendererCategory
    from qgis.PyQt.QtGui import QColor

    def apply(layer):
        categories = []
        for c in classes:
            symbol = QgsFillSymbol.createSimple({"color": QColor(c["colour"]).name(), "outline_color": "#202020",
                                                 "outline_width": "0.2"})
            symbol.setOpacity(0.7)
            categories.append(QgsRendererCategory(c["name"], symbol, c["name"]))
        layer.setRenderer(QgsCategorizedSymbolRenderer(field, categories))
    return apply


def scores(classes: list[dict], index: int = 0):
    c = classes[index]
    return lambda layer: _copy_renderer(layer, score_layer(Path(layer.source()), layer.name(), c["index"] + 1,
                                                           c["colour"]))


def heatmap(layer) -> None:
    """Similarity drawn with the 'Magma' ramp between the band's min and max."""
    from qgis.core import QgsColorRampShader, QgsRasterShader, QgsSingleBandPseudoColorRenderer

    stats = layer.dataProvider().bandStatistics(1)  # all of them: cheap on a heat map, and their flags
    # moved between QGIS versions (3.44 deprecates the old ones)
    ramp = QgsStyle.defaultStyle().colorRamp("Magma")
    shader_function = QgsColorRampShader(stats.minimumValue, stats.maximumValue, ramp)
    shader_function.classifyColorRamp(8, -1)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(shader_function)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(stats.minimumValue)
    renderer.setClassificationMax(stats.maximumValue)
    layer.setRenderer(renderer)
    layer.setOpacity(0.7)


def boxes(layer) -> None:
    symbol = QgsFillSymbol.createSimple({"style": "no", "outline_color": "#ff2d2d", "outline_width": "0.8"})
    layer.setRenderer(QgsSingleSymbolRenderer(symbol))
