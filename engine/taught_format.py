"""The `.classes.json` file format of classes taught from labels, as a pydantic model: what
`engine.dense.taught.TaughtClasses` reads and writes, and the body `POST /v1/classes` documents
(torch-free: the API documents it without importing the network code)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT = "farslip-taught-classes/1"
SUFFIX = ".classes.json"  # how `--classes @FILE` and the API tell taught classes from a class list


class TaughtFile(BaseModel):
    """What a `.classes.json` file holds (`TaughtClasses.save` writes it; strict JSON types)."""

    model_config = ConfigDict(strict=True)

    format: Literal["farslip-taught-classes/1"]  # FORMAT
    classes: list[str] = Field(..., min_length=1, description="class lines, synonyms separated by ','")
    alpha: float = Field(..., ge=0.0, le=1.0, description="weight of the prototypes against the names")
    model: dict[str, Any] = Field(..., description="name, arch and fingerprint of the model they were made with")
    made: dict[str, Any] = Field(default_factory=dict, description="how they were made")
    prototypes: dict[str, Annotated[list[float], Field(min_length=1)]] = Field(
        ..., description="class label → unit prototype (one length for all)")


def is_taught_file(spec: str) -> bool:
    """Whether a `--classes @...` names a taught-classes file rather than a class list."""
    return spec.startswith("@") and spec.endswith(SUFFIX)
