"""Building blocks of every config model: a frozen model that refuses unknown keys, and the
id and name types of the wire contract (the whole value must match).

``Id`` and ``Name`` check a value with the contract's compiled patterns (``telemetry.ID_RE``,
``NAME_RE``) instead of a pydantic ``pattern``: pydantic compiles a ``pattern`` into its own
regex engine once per field and per enclosing model (about 11 KB each, some 0.5 MB over the
config), where these share the one compiled pattern. The error is the one ``pattern`` gives
(``string_pattern_mismatch``, "String should match pattern '^(?:...)$'").
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from telemetry import ID_RE, NAME_RE

__all__ = ["FrozenModel", "Id", "Name"]


class FrozenModel(BaseModel):
    """Frozen, unknown keys refused (a typo fails at start-up)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class _Matches:
    """An after-validator: the whole string matches ``pattern``."""

    __slots__ = ("pattern", "shown")

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern: Final = pattern
        self.shown: Final = f"^(?:{pattern.pattern})$"

    def __call__(self, value: str) -> str:
        if self.pattern.fullmatch(value) is None:
            raise PydanticCustomError(
                "string_pattern_mismatch",
                "String should match pattern '{pattern}'",
                {"pattern": self.shown},
            )
        return value


Id = Annotated[str, Field(max_length=64), AfterValidator(_Matches(ID_RE))]
Name = Annotated[str, AfterValidator(_Matches(NAME_RE))]
