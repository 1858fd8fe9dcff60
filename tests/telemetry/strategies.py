"""Hypothesis strategies for valid readings and batches (shared by contract tests)."""

from __future__ import annotations

from hypothesis import strategies as st

from telemetry import (
    RESERVED_FIELD_NAMES,
    RESERVED_TAG_KEYS,
    TS_MAX_NS,
    TS_MIN_NS,
    Batch,
    Reading,
)

ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,20}\Z")
names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_]{0,15}\Z")
field_names = names.filter(lambda n: n not in RESERVED_FIELD_NAMES)
tag_keys = names.filter(lambda n: n not in RESERVED_TAG_KEYS)
# Printable text without backslash; spaces, commas, equals and quotes must survive escaping.
tag_values = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\\\x7f"),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() == s and s != "")
string_values = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x7f").filter(
        lambda c: c == "\t" or ord(c) >= 0x20
    ),
    max_size=40,
)


def field_values(subnormal: bool = True) -> st.SearchStrategy[float | int | bool | str]:
    return st.one_of(
        st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=subnormal),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.booleans(),
        string_values,
    )


@st.composite
def readings(
    draw: st.DrawFn, measurement: st.SearchStrategy[str] = names, subnormal: bool = True
) -> Reading:
    fields = draw(st.dictionaries(field_names, field_values(subnormal), min_size=1, max_size=6))
    tags = draw(st.dictionaries(tag_keys.filter(lambda k: k not in fields), tag_values, max_size=3))
    return Reading(
        device=draw(ids),
        measurement=draw(measurement),
        ts=draw(st.integers(min_value=TS_MIN_NS, max_value=TS_MAX_NS - 1)),
        fields=fields,
        tags=tags,
        quality=draw(st.sampled_from(["good", "uncertain", "bad"])),
        clock=draw(st.sampled_from(["device", "gateway"])),
    )


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    return Batch(
        gateway=draw(ids),
        seq=draw(st.integers(min_value=0, max_value=2**63 - 1)),
        readings=draw(st.lists(readings(), min_size=1, max_size=5)),
    )
