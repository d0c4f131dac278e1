"""The `.classes.json` file format of classes taught from labels, as a pydantic model: what
`engine.dense.taught.TaughtClasses` reads and writes, and the body `POST /v1/classes` documents
(torch-free: the API documents it without importing the network code)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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

    @field_validator("made")
    @classmethod
    def _inference_settings(cls, made: dict[str, Any]) -> dict[str, Any]:
        """The settings a run takes from `made` (the prototypes were made under them) must be ones a
        run can use: a file edited by hand fails here, naming them, not in the middle of a run."""
        from engine.dense.prompts import TEMPLATE_SET_NAMES

        template_set, bias = made.get("template_set"), made.get("global_bias")
        if template_set is not None and template_set not in TEMPLATE_SET_NAMES:
            raise ValueError(f"made.template_set {template_set!r} is none of {', '.join(TEMPLATE_SET_NAMES)}")
        if bias is not None and (isinstance(bias, bool) or not isinstance(bias, (int, float)) or not 0 <= bias <= 1):
            raise ValueError(f"made.global_bias {bias!r} is not a number from 0 to 1")
        return made


def is_taught_file(spec: str) -> bool:
    """Whether a `--classes @...` names a taught-classes file rather than a class list."""
    return spec.startswith("@") and spec.endswith(SUFFIX)
