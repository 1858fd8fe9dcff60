"""Register maps: shipped files load, decoding of every type and word order, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge import (
    ConfigError,
    FirmwareLinkConfig,
    ModbusPollerConfig,
    ModbusTcpTarget,
    RegisterMap,
    SerialConfig,
    decode_registers,
    load_register_map,
    parse_register_map,
    shipped_register_maps,
)


def one_register_map(reg: dict[str, object], word_order: str = "big") -> RegisterMap:
    return parse_register_map(
        {
            "model": "test",
            "measurement": "WaterConsumptionObserved",
            "word_order": word_order,
            "groups": [{"name": "g", "registers": [reg]}],
        }
    )


def test_shipped_maps_load() -> None:
    names = shipped_register_maps()
    assert {"eastron-sdm630", "eastron-sdm120", "generic-magflow"} <= set(names)
    for name in names:
        m = load_register_map(name)
        assert all(g.count <= 125 for g in m.groups)


@pytest.mark.parametrize(
    ("type_", "words", "word_order", "expected"),
    [
        ("int16", [0xFFFE], "big", -2),
        ("uint16", [0xFFFE], "big", 65534),
        ("int32", [0xFFFF, 0xFFFE], "big", -2),
        ("int32", [0xFFFE, 0xFFFF], "little", -2),
        ("uint32", [0x0001, 0x0000], "big", 65536),
        ("uint32", [0x0000, 0x0001], "little", 65536),
        ("float32", [0x4366, 0x0000], "big", 230.0),  # ABCD
        ("float32", [0x0000, 0x4366], "little", 230.0),  # CDAB
    ],
)
def test_decoding(type_: str, words: list[int], word_order: str, expected: float) -> None:
    m = one_register_map({"field": "flow", "address": 10, "type": type_}, word_order)
    fields, invalid = decode_registers(m, m.groups[0], words)
    # "flow" is a float field of the vocabulary: integers come out as floats
    assert fields == {"flow": expected}
    assert isinstance(fields["flow"], float)
    assert invalid == []


def test_scale_offset_and_per_register_word_order() -> None:
    m = one_register_map(
        {
            "field": "consumption",
            "address": 0,
            "type": "uint32",
            "scale": 0.001,
            "word_order": "little",
        }
    )
    fields, _ = decode_registers(m, m.groups[0], [0xE240, 0x0001])  # 123456 litres
    assert fields == {"consumption": pytest.approx(123.456)}


def test_integer_fields_outside_the_vocabulary_stay_integers() -> None:
    m = one_register_map({"field": "alarmFlags", "address": 0, "type": "uint16"})
    fields, _ = decode_registers(m, m.groups[0], [5])
    assert fields == {"alarmFlags": 5}
    assert isinstance(fields["alarmFlags"], int)


def test_nan_values_are_left_out_and_reported() -> None:
    m = one_register_map({"field": "flow", "address": 0, "type": "float32"})
    assert decode_registers(m, m.groups[0], [0x7FC0, 0x0000]) == ({}, ["flow"])


@given(st.lists(st.integers(0, 0xFFFF), min_size=72, max_size=72))
def test_any_registers_decode_without_error(words: list[int]) -> None:
    m = load_register_map("eastron-sdm630")
    fields, invalid = decode_registers(m, m.group("instantaneous"), words)
    assert set(fields) | set(invalid) == {r.field for r in m.group("instantaneous").registers}


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"type": "float64"}, "groups[0].registers[0].type"),
        ({"address": 70000}, "groups[0].registers[0].address"),
        ({"field": "bad name"}, "groups[0].registers[0].field"),
        ({"colour": "red"}, "groups[0].registers[0].colour"),
    ],
)
def test_bad_register_names_the_key(change: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        one_register_map({"field": "flow", "address": 0, "type": "float32", **change})
    assert info.value.key == key


def test_group_span_and_overlap_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "meter.yaml"
    path.write_text(
        "model: x\nmeasurement: M\ngroups:\n  - name: g\n    registers:\n"
        "      - {field: a, address: 0, type: float32}\n"
        "      - {field: b, address: 1, type: uint16}\n"
    )
    with pytest.raises(ConfigError, match="register 1 used by 'a' and 'b'") as info:
        load_register_map(path)
    assert info.value.source == str(path)
    with pytest.raises(ConfigError, match="at most 125"):
        parse_register_map(
            {
                "model": "x",
                "measurement": "M",
                "groups": [
                    {
                        "name": "g",
                        "registers": [
                            {"field": "a", "address": 0, "type": "uint16"},
                            {"field": "b", "address": 200, "type": "uint16"},
                        ],
                    }
                ],
            }
        )


def test_unknown_shipped_map_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="eastron-sdm630"):
        load_register_map("no-such-meter")


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"serial\.baudrate"):
        SerialConfig(url="loop://", baudrate=0)
    with pytest.raises(ConfigError, match=r"serial\.parity"):
        SerialConfig(url="loop://", parity="X")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"device_names\[1\]"):
        FirmwareLinkConfig(serial=SerialConfig(url="loop://"), device_names={1: "bad name"})
    with pytest.raises(ConfigError, match=r"intervals\.nope"):
        ModbusPollerConfig(
            device="m-1",
            target=ModbusTcpTarget(host="127.0.0.1"),
            register_map=load_register_map("eastron-sdm120"),
            intervals={"nope": 1.0},
        )
