"""What every scenario section shares: strict validation, byte sizes as people write
them, and ``"none"`` for a field that may be unset."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo, field_validator

from fogsim.units import parse_bytes

ByteSize = Annotated[int, BeforeValidator(parse_bytes)]


def _may_be_none(annotation: Any) -> bool:
    """Whether a field's type admits ``None`` (``int | None``, ``Optional[int]``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_may_be_none(a) for a in typing.get_args(annotation))
    return annotation is type(None)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _none(cls, value: Any, info: ValidationInfo) -> Any:
        """``"none"`` sets a field that may be unset to ``None``: TOML has no null, so a
        field whose default is a value (``device_eval_nodes = 10``) could not be
        unset from a file or ``--set`` otherwise."""
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, str) and value.lower() == "none" and field is not None:
            return None if _may_be_none(field.annotation) else value
        return value
