"""The boundary between msgspec and the contract: what it raises becomes a :class:`PayloadError`.

Every decoder in :mod:`telemetry` checks a payload here before and after msgspec sees it:

1. size: more than ``MAX_PAYLOAD_BYTES`` is refused before parsing;
2. UTF-8: checked here, not left to msgspec. msgspec up to 0.22 raised
   ``UnicodeDecodeError`` for a string with bad UTF-8, 0.23 raises ``DecodeError``, and every
   version skips the bytes of keys it does not know without looking at them. Checking the
   bytes ourselves makes "bad UTF-8 is malformed" true for the whole payload and for every
   msgspec version;
3. what msgspec raises (:data:`LIBRARY_ERRORS`) is translated by :func:`translate`:
   ``ValidationError`` -> :class:`InvalidPayload`, ``DecodeError`` -> :class:`MalformedPayload`,
   and ``RecursionError`` (msgspec's guard against nesting deeper than the interpreter's
   recursion limit) -> :class:`MalformedPayload`.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from telemetry._errors import InvalidPayload, MalformedPayload, PayloadError, PayloadTooLarge
from telemetry._model import MAX_PAYLOAD_BYTES

__all__ = [
    "LIBRARY_ERRORS",
    "bad_utf8_bytes",
    "check_size",
    "check_utf8",
    "split_msgspec_message",
    "translate",
    "utf8_error",
]

#: Everything msgspec's JSON decoder raises for a bad payload, in any supported version
#: (``ValidationError`` is a ``DecodeError``).
LIBRARY_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)

_MSGSPEC_PATH: Final = re.compile(r" - at `(\$[^`]*)`$")
# ``surrogateescape`` turns each byte that is not part of valid UTF-8 into one of these.
_ESCAPED_BYTE: Final = re.compile("[\udc80-\udcff]")


def check_size(payload: bytes | bytearray | memoryview) -> None:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(len(payload), MAX_PAYLOAD_BYTES)


def utf8_error(data: bytes | bytearray | memoryview) -> UnicodeDecodeError | None:
    """The first invalid UTF-8 sequence in ``data``, or ``None`` if it is valid UTF-8."""
    if not isinstance(data, memoryview) and data.isascii():  # the common case, no copy
        return None
    try:
        str(data, "utf-8")
    except UnicodeDecodeError as exc:
        return exc
    return None


def check_utf8(payload: bytes | bytearray | memoryview) -> None:
    """Refuse a payload that is not valid UTF-8 (RFC 8259 section 8.1) as malformed."""
    exc = utf8_error(payload)
    if exc is not None:
        raise MalformedPayload(f"not valid UTF-8: {exc.reason} at byte {exc.start}") from exc


def bad_utf8_bytes(data: bytes | bytearray | memoryview) -> int:
    """How many bytes of ``data`` are not part of a valid UTF-8 sequence (0 if it is valid).

    Counts add up over slices cut at ASCII bytes, which is how JSON values are cut, so the
    bad bytes of a payload minus those of its readings are the bad bytes of its envelope.
    """
    if not isinstance(data, memoryview) and data.isascii():
        return 0
    return len(_ESCAPED_BYTE.findall(str(data, "utf-8", "surrogateescape")))


def split_msgspec_message(message: str) -> tuple[str, str]:
    """Split msgspec's ``"reason - at `$.path`"`` into reason and JSON path (``$`` if none)."""
    match = _MSGSPEC_PATH.search(message)
    if match is None:
        return message, "$"
    return message[: match.start()], match.group(1)


def translate(exc: BaseException) -> PayloadError:
    """The contract error for one of :data:`LIBRARY_ERRORS` (raise it ``from exc``)."""
    if isinstance(exc, msgspec.ValidationError):
        reason, path = split_msgspec_message(str(exc))
        return InvalidPayload(reason, path=path)
    if isinstance(exc, RecursionError):
        return MalformedPayload("nested too deeply to decode")
    if isinstance(exc, UnicodeDecodeError):
        return MalformedPayload(f"not valid UTF-8: {exc.reason}")
    return MalformedPayload(f"not valid JSON: {exc}")
