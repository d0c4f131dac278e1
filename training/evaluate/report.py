"""Markdown reports of evaluation results beside the paper's published figures."""

from __future__ import annotations

import json
from pathlib import Path

from training.evaluate.ovss import published
from training.evaluate.ovss_datasets import DATASETS

ORDER = ("openearthmap", "loveda", "potsdam", "vaihingen", "udd5", "vdd", "uavid", "isaid")


CLASSIFICATION = ("skyscript", "aid", "eurosat", "fmow", "millionaid", "patternnet", "nwpu", "rsicb")
RETRIEVAL = ("rsicd", "rsitmd", "ucm")


def write_report(folder: Path) -> Path:
    """`report.md`: OVSS mIoU, zero-shot top-1 and retrieval mean recall measured in `folder`, each
    table followed by the paper's published rows."""
    report = folder / "report.md"
    text = "\n".join([_ovss_table(folder), _classification_table(folder), _retrieval_table(folder)])
    report.write_text(text, encoding="utf-8")
    return report


def _results(folder: Path, pattern: str) -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob(pattern))]


def _classification_table(folder: Path) -> str:
    measured: dict[str, dict[str, float]] = {}
    for r in _results(folder, "classify_*.json"):
        measured.setdefault(r["model"], {})[r["dataset"]] = r["top1"]
    lines = ["# Zero-shot scene classification, top-1 (%)", "",
             "| model | " + " | ".join(CLASSIFICATION) + " | mean |", "|" + "---|" * (len(CLASSIFICATION) + 2)]
    for model, values in measured.items():
        cells = [f"{values[d]:.2f}" if d in values else "" for d in CLASSIFICATION]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {sum(values.values()) / len(values):.2f} |")
    for arch, models in published("classification").items():
        for name, values in models.items():
            cells = [f"{values[d]:.2f}" if d in values else "" for d in CLASSIFICATION]
            lines.append(f"| paper: {name} {arch} | " + " | ".join(cells) + f" | {values['mean']:.2f} |")
    return "\n".join(lines) + "\n"


def _retrieval_table(folder: Path) -> str:
    measured: dict[str, dict[str, dict]] = {}
    for r in _results(folder, "retrieval_*.json"):
        measured.setdefault(r["model"], {})[r["dataset"]] = {"i2t": r["i2t"]["mean_recall"], "t2i": r["t2i"]["mean_recall"]}
    heads = [f"{d} {k}" for d in RETRIEVAL for k in ("I2T", "T2I")]
    lines = ["# Retrieval, mean recall of R@1/5/10 (%)", "", "| model | " + " | ".join(heads) + " |",
             "|" + "---|" * (len(heads) + 1)]
    rows = [(m, v) for m, v in measured.items()]
    rows += [(f"paper: {n} {a}", v) for a, ms in published("retrieval").items() for n, v in ms.items()]
    for model, values in rows:
        cells = [f"{values[d][k]:.1f}" if d in values else "" for d in RETRIEVAL for k in ("i2t", "t2i")]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def percent(result: dict, key: str) -> float:
    """A result's figure in percent, the paper's unit (results say their unit; `eval ovss` has always
    written percent, a result marked "fraction" is scaled)."""
    value = float(result[key])
    return 100 * value if result.get("units") == "fraction" else value


def _ovss_table(folder: Path) -> str:
    """OVSS: one row per (model, preset) measured here, then the paper's rows, all in percent."""
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for path in sorted(folder.glob("ovss_*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        rows.setdefault((result["model"], result["preset"]), {})[result["dataset"]] = percent(result, "miou")
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
    return "# OVSS mIoU (%)\n\n" + header + "\n".join(lines) + "\n"
