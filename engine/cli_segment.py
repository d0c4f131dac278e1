"""CLI commands that segment imagery (filled by the GeoTIFF pipeline)."""

from __future__ import annotations

import argparse


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register segmentation sub-commands on the `farslip` parser."""
