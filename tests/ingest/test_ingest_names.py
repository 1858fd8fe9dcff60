"""Ingest checks the contract's names only for reading shapes its intake has not seen pass.

`MessageDecoder` decodes with ``reading_names=False`` and lets `telemetry.Intake` check the
names of readings whose key is not cached; a refused name sends the message through the
checked decode again. These tests hold that to the plain path (every name checked while
decoding) on the same sequence of messages: the same lines, the same refusals with the same
reasons, paths and raw bytes, the same state afterwards.
"""

from __future__ import annotations

import json
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

import ingest._batcher as batcher
from ingest._batcher import Chunk, MessageDecoder
from ingest._deadletter import Refusal
from telemetry import Topics, decode_batch_partial

ROOT = "unit"
NOW = 1_732_780_801.25
TS = 1_732_780_800 * 10**9

# Names the contract takes, and names it refuses for each place a name can be.
DEVICES = ["d-1", "d-2", "bad/dev", "d 3"]
MEASUREMENTS = ["TrafficFlowObserved", "ingest_fake", "bad name", "m#"]
FIELDS = ["intensity", "speed", "time", "x y"]  # "time" is reserved
TAG_KEYS = ["lane", "dir", "bad key", "intensity"]  # "intensity" can clash with a field
TAG_VALUES = ["1", "north", "a\\b", "tab\there"]


def checked_decode(
    payload: bytes | bytearray | memoryview, *, reading_names: bool = True
) -> object:
    """decode_batch_partial with every name checked, whatever the caller asks."""
    del reading_names
    return decode_batch_partial(payload)


reading = st.fixed_dictionaries(
    {
        "d": st.sampled_from(DEVICES),
        "m": st.sampled_from(MEASUREMENTS),
        "t": st.integers(TS - 10**9, TS + 10**9),
        "f": st.dictionaries(st.sampled_from(FIELDS), st.integers(0, 9), min_size=1, max_size=2),
    },
    optional={
        "g": st.dictionaries(
            st.sampled_from(TAG_KEYS), st.sampled_from(TAG_VALUES), min_size=1, max_size=2
        ),
    },
)
message = st.tuples(
    st.sampled_from(["gw-1", "gw-2"]), st.lists(reading, min_size=1, max_size=6)
)


def outcome(chunk: Chunk | None, refusal: Refusal | None) -> object:
    lines = None if chunk is None else (chunk.lines[:-1], chunk.readings, chunk.good_index)
    items = None
    if refusal is not None:
        items = (
            refusal.kind, refusal.reason, refusal.path,
            [(i.index, i.code, i.reason, i.path, i.raw) for i in refusal.rejected or []],
        )
    return lines, items


@settings(max_examples=80, deadline=None)
@given(st.lists(message, min_size=1, max_size=8))
def test_deferred_name_checks_match_checking_every_name(
    messages: list[tuple[str, list[dict[str, object]]]],
) -> None:
    topics = Topics(ROOT)
    deferred = MessageDecoder(topics, worker="w-0", max_series_per_gateway=40)
    plain = MessageDecoder(topics, worker="w-0", max_series_per_gateway=40)
    # Each message twice: the second time every shape that passed is cached.
    for seq, (gateway, rs) in enumerate(messages + messages):
        payload = json.dumps({"v": 1, "gw": gateway, "seq": seq, "r": rs}).encode()
        topic = topics.telemetry(gateway)
        got = deferred.decode(topic, payload, dup=False, now=NOW)
        with mock.patch.object(batcher, "decode_batch_partial", checked_decode):
            want = plain.decode(topic, payload, dup=False, now=NOW)
        assert outcome(*got) == outcome(*want)


def test_a_bad_name_in_a_cached_batch_shape_is_still_refused() -> None:
    topics = Topics(ROOT)
    decoder = MessageDecoder(topics, worker="w-0")
    good = {"d": "d-1", "m": "TrafficFlowObserved", "t": TS, "f": {"intensity": 1}}
    for seq, rs in enumerate([
        [good, good],
        [good, {**good, "d": "bad/dev"}, good],
        [good, {**good, "g": {"intensity": "1"}}],
    ]):
        payload = json.dumps({"v": 1, "gw": "gw-1", "seq": seq, "r": rs}).encode()
        chunk, refusal = decoder.decode(topics.telemetry("gw-1"), payload, dup=False, now=NOW)
        assert chunk is not None
        bad = [] if refusal is None else refusal.rejected or []
        assert chunk.readings == len(rs) - len(bad)
        if seq == 1:
            assert [(i.index, i.path) for i in bad] == [(1, "$.r[1].d")]
            assert "bad/dev" in bad[0].reason
            assert json.loads(bad[0].raw) == rs[1]
        if seq == 2:
            assert [(i.index, i.path) for i in bad] == [(1, "$.r[1].g.intensity")]
            assert "both a tag key and a field name" in bad[0].reason
