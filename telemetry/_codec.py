"""JSON codec for telemetry batches: fast, strict, and precise about what is wrong.

Decoding runs in two layers:

1. msgspec decodes and type-checks the whole payload in C (types, ranges, lengths);
2. names (ids, measurement, field and tag names, tag values) are checked against their
   patterns once and then remembered, so a steady stream of known names costs a set lookup.

:func:`decode_batch` is all-or-nothing: a payload is accepted whole or refused with one
typed error. :func:`decode_batch_partial` is for the platform's intake: a valid envelope
with some bad readings yields the good readings plus a list of rejects with reasons, so that
one bad reading never takes the good ones with it and nothing is dropped silently.

The error guarantee, for any input bytes and every supported msgspec version: the decoders
return or raise a :class:`PayloadError` (the tree in ``telemetry._errors``), nothing else.
Whatever msgspec raises is translated at the boundary (``telemetry._decoding``) with the
library error as ``__cause__``. Bad UTF-8 anywhere, unknown keys included, is
:class:`MalformedPayload`; :func:`decode_batch_partial` refuses exactly the readings holding
it (by index, with the reason) and keeps the others. What is refused whole there: a payload
too large, an envelope that breaks the contract (bad UTF-8 outside the readings included),
and a payload msgspec cannot split into readings at all (broken JSON syntax, a lone
surrogate escape such as ``"\\ud800"``, nesting deeper than the recursion limit).
"""

from __future__ import annotations

from typing import Final

import msgspec

from telemetry._decoding import (
    LIBRARY_ERRORS,
    bad_utf8_bytes,
    check_size,
    check_utf8,
    translate,
    utf8_error,
)
from telemetry._errors import (
    InvalidPayload,
    MalformedPayload,
    PayloadError,
    PayloadTooLarge,
    UnsupportedVersion,
)
from telemetry._model import (
    ID_RE,
    MAX_PAYLOAD_BYTES,
    MAX_READINGS,
    NAME_RE,
    RESERVED_FIELD_NAMES,
    RESERVED_TAG_KEYS,
    SUPPORTED_VERSIONS,
    TAG_VALUE_RE,
    Batch,
    Reading,
)

__all__ = [
    "DecodedBatch",
    "RejectedReading",
    "decode_batch",
    "decode_batch_partial",
    "encode_batch",
]

_encoder: Final = msgspec.json.Encoder()
_batch_decoder: Final = msgspec.json.Decoder(Batch)
_reading_decoder: Final = msgspec.json.Decoder(Reading)


class _Probe(msgspec.Struct):
    """Just enough of a batch to tell a wrong version from a wrong shape."""

    v: object = msgspec.UNSET


class _Envelope(msgspec.Struct, rename={"version": "v", "gateway": "gw"}):
    """A batch whose readings are left undecoded, for per-reading triage."""

    gateway: str
    seq: int
    r: list[msgspec.Raw]
    version: int = 1


class RejectedReading(msgspec.Struct, frozen=True):
    """A reading refused by :func:`decode_batch_partial`, with why and where."""

    index: int
    reason: str
    path: str
    raw: bytes


class DecodedBatch(msgspec.Struct, frozen=True):
    """The accepted part of a batch and the readings that were refused."""

    batch: Batch
    rejected: list[RejectedReading]


# Name caches: names that already passed their pattern. Bounded so that a stream of random
# ids cannot grow them without limit; clearing only costs re-checking.
_CACHE_LIMIT: Final = 200_000
_ok_ids: set[str] = set()
_ok_names: set[str] = set()
_ok_field_names: set[str] = set()
_ok_tags: set[tuple[str, str]] = set()


_probe_decoder: Final = msgspec.json.Decoder(_Probe)
_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)


def encode_batch(batch: Batch) -> bytes:
    """Encode a batch to its wire form; refuse it if it would exceed the size limit."""
    payload = _encoder.encode(batch)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(len(payload), MAX_PAYLOAD_BYTES)
    return payload


def decode_batch(payload: bytes | bytearray | memoryview) -> Batch:
    """Decode and validate a whole batch; any defect raises one :class:`PayloadError`."""
    return _decode_whole(payload, names=True)


def _decode_whole(payload: bytes | bytearray | memoryview, *, names: bool) -> Batch:
    check_size(payload)
    check_utf8(payload)
    try:
        batch = _batch_decoder.decode(payload)
    except LIBRARY_ERRORS as exc:
        raise _diagnose(payload, exc) from exc
    if batch.version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(batch.version, SUPPORTED_VERSIONS)
    if names:
        _check_batch_names(batch)
    elif batch.gateway not in _ok_ids:
        _check_id(batch.gateway, "$.gw")
    return batch


def decode_batch_partial(
    payload: bytes | bytearray | memoryview, *, reading_names: bool = True
) -> DecodedBatch:
    """Decode a batch keeping every valid reading and listing the refused ones.

    The envelope (version, gateway, seq, readings list) must be valid, otherwise the whole
    payload is refused with a :class:`PayloadError`. The returned batch may hold no
    readings when all of them were refused. Every reading is either in the batch or in
    ``rejected``, so a caller can account for all of them.

    ``reading_names=False`` leaves the names inside readings (device, measurement, field
    and tag names, tag values) unchecked when the whole batch decodes: for a caller that
    checks them itself where it must, as :meth:`telemetry.Intake.encode` does with
    ``check_names=True`` (only for reading shapes it has not seen pass). When some reading
    does not decode, every reading is checked as usual.
    """
    try:
        return DecodedBatch(batch=_decode_whole(payload, names=reading_names), rejected=[])
    except (InvalidPayload, MalformedPayload) as exc:
        first_error = exc
    try:
        # Readings stay raw bytes: skipped, not decoded, so one bad reading cannot fail this.
        envelope = _envelope_decoder.decode(payload)
    except LIBRARY_ERRORS:
        raise first_error from None
    if envelope.version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(envelope.version, SUPPORTED_VERSIONS)
    if not 1 <= len(envelope.r) <= MAX_READINGS:
        raise first_error
    if not ID_RE.fullmatch(envelope.gateway) or not 0 <= envelope.seq <= 2**63 - 1:
        raise first_error
    good: list[Reading] = []
    rejected: list[RejectedReading] = []
    bad_bytes_in_readings = 0
    for index, raw in enumerate(envelope.r):
        outcome = _triage_reading(raw, index)
        if isinstance(outcome, Reading):
            good.append(outcome)
        else:
            rejected.append(outcome)
            bad_bytes_in_readings += bad_utf8_bytes(outcome.raw)
    # The whole batch failed, so something is wrong; if no reading is, it is the envelope.
    # Bad UTF-8 outside the readings (an unknown key, a second "r") is the envelope's too.
    if not rejected or bad_utf8_bytes(payload) > bad_bytes_in_readings:
        raise first_error
    batch = Batch(
        version=envelope.version, gateway=envelope.gateway, seq=envelope.seq, readings=good
    )
    return DecodedBatch(batch=batch, rejected=rejected)


def _triage_reading(raw: msgspec.Raw, index: int) -> Reading | RejectedReading:
    """Decode one raw reading of a batch, or say why it is refused."""
    at = f"$.r[{index}]"
    data = bytes(raw)
    bad_utf8 = utf8_error(data)
    if bad_utf8 is not None:
        reason = f"not valid UTF-8: {bad_utf8.reason} at byte {bad_utf8.start} of the reading"
        return RejectedReading(index=index, reason=reason, path=at, raw=data)
    try:
        reading = _reading_decoder.decode(data)
        check_reading_names(reading, index)
    except LIBRARY_ERRORS as exc:
        error = translate(exc)
        path = (error.path or "$").replace("$", at, 1)
        return RejectedReading(index=index, reason=error.reason, path=path, raw=data)
    except InvalidPayload as exc:
        return RejectedReading(index=index, reason=exc.reason, path=exc.path or at, raw=data)
    return reading


def _diagnose(payload: bytes | bytearray | memoryview, exc: BaseException) -> PayloadError:
    """Turn a msgspec failure into the most precise contract error."""
    if not isinstance(exc, msgspec.ValidationError):
        return translate(exc)
    try:
        probe = _probe_decoder.decode(payload)
    except LIBRARY_ERRORS:
        probe = _Probe()
    if probe.v is not msgspec.UNSET and probe.v not in SUPPORTED_VERSIONS:
        return UnsupportedVersion(probe.v, SUPPORTED_VERSIONS)
    return translate(exc)


def _remember(cache: set[str] | set[tuple[str, str]]) -> None:
    if len(cache) > _CACHE_LIMIT:
        cache.clear()


def _check_batch_names(batch: Batch) -> None:
    if batch.gateway not in _ok_ids:
        _check_id(batch.gateway, "$.gw")
    ok_ids, ok_names, ok_fields, ok_tags = _ok_ids, _ok_names, _ok_field_names, _ok_tags
    for index, r in enumerate(batch.readings):
        if (
            r.device not in ok_ids
            or r.measurement not in ok_names
            or not ok_fields.issuperset(r.fields)
            or (r.tags and not ok_tags.issuperset(r.tags.items()))
            or (r.tags and not r.tags.keys().isdisjoint(r.fields))
        ):
            check_reading_names(r, index)


def _check_id(value: str, path: str) -> None:
    if not ID_RE.fullmatch(value):
        raise InvalidPayload(
            f"id {value!r} must match {ID_RE.pattern} (no '/', '+', '#' or spaces)", path=path
        )
    _remember(_ok_ids)
    _ok_ids.add(value)


def check_reading_names(r: Reading, index: int) -> None:
    """The contract's name checks of one reading (``index``: its place in the batch, for the
    error's path); :class:`InvalidPayload` at the first name refused."""
    at = f"$.r[{index}]"
    if r.device not in _ok_ids:
        _check_id(r.device, f"{at}.d")
    if r.measurement not in _ok_names:
        if not NAME_RE.fullmatch(r.measurement):
            raise InvalidPayload(
                f"measurement {r.measurement!r} must match {NAME_RE.pattern}", path=f"{at}.m"
            )
        _remember(_ok_names)
        _ok_names.add(r.measurement)
    for key in r.fields:
        if key in _ok_field_names:
            continue
        if key in RESERVED_FIELD_NAMES:
            raise InvalidPayload(f"field name {key!r} is reserved", path=f"{at}.f.{key}")
        if not NAME_RE.fullmatch(key):
            raise InvalidPayload(
                f"field name {key!r} must match {NAME_RE.pattern}", path=f"{at}.f"
            )
        _remember(_ok_field_names)
        _ok_field_names.add(key)
    for item in r.tags.items():
        key, value = item
        if key in r.fields:  # known names each, yet not together in one reading
            raise InvalidPayload(
                f"{key!r} is both a tag key and a field name", path=f"{at}.g.{key}"
            )
        if item in _ok_tags:
            continue
        if key in RESERVED_TAG_KEYS:
            raise InvalidPayload(f"tag key {key!r} is reserved", path=f"{at}.g.{key}")
        if not NAME_RE.fullmatch(key):
            raise InvalidPayload(f"tag key {key!r} must match {NAME_RE.pattern}", path=f"{at}.g")
        if not TAG_VALUE_RE.fullmatch(value):
            raise InvalidPayload(
                f"tag value {value!r} holds a backslash or a control character",
                path=f"{at}.g.{key}",
            )
        _remember(_ok_tags)
        _ok_tags.add(item)
