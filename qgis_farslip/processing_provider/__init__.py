"""The FarSLIP Processing provider (batch dialog, graphical models, qgis_process)."""
