"""Building blocks of every config model: a frozen model that refuses unknown keys, and the
id and name types of the wire contract (anchored: the whole value must match)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from telemetry import ID_RE, NAME_RE

__all__ = ["FrozenModel", "Id", "Name"]


class FrozenModel(BaseModel):
    """Frozen, unknown keys refused (a typo fails at start-up)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# pydantic searches a pattern; anchor it so the whole value must match.
Id = Annotated[str, Field(pattern=rf"^(?:{ID_RE.pattern})$", max_length=64)]
Name = Annotated[str, Field(pattern=rf"^(?:{NAME_RE.pattern})$")]
