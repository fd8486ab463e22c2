"""What every scenario section shares: strict validation, and byte sizes as people
write them."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

from fogsim.units import parse_bytes

ByteSize = Annotated[int, BeforeValidator(parse_bytes)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
