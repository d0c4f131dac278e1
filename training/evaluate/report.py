"""Markdown reports of evaluation results beside the paper's published figures."""

from __future__ import annotations

import json
from pathlib import Path

from training.evaluate.ovss import published
from training.evaluate.ovss_datasets import DATASETS

ORDER = ("openearthmap", "loveda", "potsdam", "vaihingen", "udd5", "vdd", "uavid", "isaid")


def write_ovss_report(folder: Path) -> Path:
    """`ovss_report.md`: one row per (model, preset) measured here, then the paper's rows."""
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for path in sorted(folder.glob("ovss_*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        rows.setdefault((result["model"], result["preset"]), {})[result["dataset"]] = result["miou"]
    header = "| model | preset | " + " | ".join(ORDER) + " | mean |\n|" + "---|" * (len(ORDER) + 3) + "\n"
    lines = []
    for (model, preset_name), values in rows.items():
        cells = [f"{values[d]:.2f}" if d in values else "" for d in ORDER]
        mean = f"{sum(values.values()) / len(values):.2f}" + ("" if len(values) == len(ORDER) else " (partial)")
        lines.append(f"| {model} | {preset_name} | " + " | ".join(cells) + f" | {mean} |")
    for arch, models in published("ovss").items():
        for name, values in models.items():
            cells = [f"{values[d]:.2f}" if d in values else "" for d in ORDER]
            lines.append(f"| paper: {name} {arch} | paper | " + " | ".join(cells) + f" | {values['mean']:.2f} |")
    assert set(ORDER) == set(DATASETS)
    report = folder / "ovss_report.md"
    report.write_text("# OVSS mIoU (%)\n\n" + header + "\n".join(lines) + "\n", encoding="utf-8")
    return report
