"""NGSI-LD (ETSI GS CIM 009) view of the live state: ids, entities, queries, errors. No I/O.

The routes in ``_routes_ngsild.py`` feed these functions the API's live state (what
``/v1/live`` serves); nothing here reads InfluxDB.

Entity ids (one entity per device, measurement and reading tags, i.e. per live series)::

    urn:ngsi-ld:<Type>:<gateway>:<device>[:<tag>=<value>]...
    urn:ngsi-ld:AirQualityObserved:air-gw-3:aq-1
    urn:ngsi-ld:TrafficFlowObserved:cabinet-017:loop-3:lane=1

``<Type>`` is the measurement (a Smart Data Models type); gateway, device, tag keys and
values are percent-encoded except ``A-Z a-z 0-9 . _ -`` (so a ``:`` inside an id is ``%3A``),
which keeps every id a valid RFC 8141 URN and tells the segments apart.

Errors are NGSI-LD ProblemDetails (``type`` ``https://uri.etsi.org/ngsi-ld/errors/...``)::

    NgsiLdError (api.ProblemError)
    ├── BadRequestData          400  a parameter value is malformed
    ├── InvalidRequest          400  the request is incompatible with the operation
    │   └── NotAcceptable       406  Accept names no media type served here
    ├── ResourceNotFound        404  no such entity, type or attribute
    └── OperationNotSupported   422  valid NGSI-LD that this read-only subset does not do
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, cast
from urllib.parse import unquote

from api._errors import ProblemError
from api._live import Latest
from telemetry import ID_RE, MEASUREMENTS, NAME_RE, Location

__all__ = [
    "CORE_CONTEXT",
    "ERRORS",
    "JSON",
    "LD_JSON",
    "LINK_REL",
    "UNIT_CODES",
    "BadRequestData",
    "EntityRef",
    "GeoQuery",
    "InvalidRequest",
    "NgsiLdError",
    "NotAcceptable",
    "OperationNotSupported",
    "Query",
    "ResourceNotFound",
    "Term",
    "attribute_values",
    "context_document",
    "entity",
    "entity_id",
    "expand_term",
    "has_location",
    "haversine_m",
    "names",
    "negotiate",
    "parse_entity_id",
    "parse_georel",
    "parse_q",
    "term_iri",
]

JSON: Final = "application/json"
LD_JSON: Final = "application/ld+json"
LINK_REL: Final = "http://www.w3.org/ns/json-ld#context"
#: The NGSI-LD core @context (version 1.7). Every NGSI-LD processor ships it built in.
CORE_CONTEXT: Final = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.7.jsonld"
ERRORS: Final = "https://uri.etsi.org/ngsi-ld/errors/"
_DEFAULT_VOCAB: Final = "https://uri.etsi.org/ngsi-ld/default-context/"
_SDM: Final = "https://smartdatamodels.org/"

# ---------------------------------------------------------------------------------------------
# Errors


class NgsiLdError(ProblemError):
    """An NGSI-LD ProblemDetails answer (clause 5.5.2 error types)."""

    error_type: ClassVar[str] = "InternalError"

    def to_problem(self, instance: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": ERRORS + self.error_type,
            "title": self.title,
            "status": self.status_code,
            "detail": self.detail,
            "instance": instance,
        }
        if self.parameter is not None:
            body["parameter"] = self.parameter
        return body


class BadRequestData(NgsiLdError):
    status = 400
    error_type = "BadRequestData"
    title = "Bad request data"


class InvalidRequest(NgsiLdError):
    status = 400
    error_type = "InvalidRequest"
    title = "Invalid request"


class NotAcceptable(InvalidRequest):
    status = 406
    title = "Not acceptable"


class ResourceNotFound(NgsiLdError):
    status = 404
    error_type = "ResourceNotFound"
    title = "Resource not found"


class OperationNotSupported(NgsiLdError):
    status = 422
    error_type = "OperationNotSupported"
    title = "Operation not supported"


# ---------------------------------------------------------------------------------------------
# Content negotiation

_MEDIA_RANGE: Final = re.compile(r"\s*([^\s;/]+)/([^\s;]+)\s*((?:;[^,]*)?)")


def negotiate(accept: str | None) -> Literal["application/json", "application/ld+json"]:
    """The media type to answer for an ``Accept`` header (RFC 9110 q-values).

    ``application/json`` unless ``application/ld+json`` is preferred; ties go to the more
    specific range, then to ``application/json``. Raise :class:`NotAcceptable` when neither
    is acceptable (``application/geo+json`` is not served).
    """
    if accept is None or not accept.strip():
        return JSON
    best: dict[str, tuple[float, int]] = {}
    for item in accept.split(","):
        if not item.strip():
            continue
        match = _MEDIA_RANGE.fullmatch(item)
        if match is None:
            continue
        main, sub, params = match.group(1).lower(), match.group(2).lower(), match.group(3)
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0 or math.isnan(q):
                    q = 0.0
        for candidate in (JSON, LD_JSON):
            c_main, c_sub = candidate.split("/")
            if (main, sub) == (c_main, c_sub):
                specificity = 3
            elif main == c_main and sub == "*":
                specificity = 2
            elif (main, sub) == ("*", "*"):
                specificity = 1
            else:
                continue
            held = best.get(candidate)
            if held is None or specificity > held[1]:
                best[candidate] = (q, specificity)
    ranked = sorted(
        ((q, spec, candidate == JSON, candidate) for candidate, (q, spec) in best.items()),
        reverse=True,
    )
    if not ranked or ranked[0][0] <= 0.0:
        raise NotAcceptable(
            f"Accept {accept[:200]!r} allows neither application/json nor application/ld+json, "
            "the media types served here",
            parameter="Accept", location="header",
        )
    return JSON if ranked[0][3] == JSON else LD_JSON


# ---------------------------------------------------------------------------------------------
# Entity ids

_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_PREFIX: Final = "urn:ngsi-ld:"


def _enc(text: str) -> str:
    return "".join(
        ch if ch in _SAFE else "".join(f"%{b:02X}" for b in ch.encode()) for ch in text
    )


def entity_id(measurement: str, gateway: str, device: str, tags: Mapping[str, str]) -> str:
    """The entity id of one live series (see the module docstring)."""
    parts = [_PREFIX + measurement, _enc(gateway), _enc(device)]
    parts.extend(f"{_enc(k)}={_enc(v)}" for k, v in sorted(tags.items()))
    return ":".join(parts)


@dataclass(frozen=True, slots=True)
class EntityRef:
    """What an entity id names: measurement, gateway, device and reading tags."""

    type: str
    gateway: str
    device: str
    tags: tuple[tuple[str, str], ...] = ()


def parse_entity_id(text: str) -> list[EntityRef]:
    """The series an entity id can name; empty when it is not one of this API's ids.

    Usually one candidate. A client that sent ``%3A`` unescaped in a URL path arrives here
    with the ``:`` decoded; then every split of the segments into gateway and device is a
    candidate, and the caller keeps the one the live state holds.
    """
    if len(text) > 1024 or text[: len(_PREFIX)].lower() != _PREFIX:
        return []
    type_, _, rest = text[len(_PREFIX):].partition(":")
    if not NAME_RE.fullmatch(type_) or not rest:
        return []
    segments = rest.split(":")
    first_tag = next((i for i, s in enumerate(segments) if "=" in s), len(segments))
    ids = segments[:first_tag]
    if len(ids) < 2:
        return []
    # ``=`` is always escaped inside keys and values, so a segment without one continues the
    # previous tag's value (a ``:`` in it arrived decoded).
    raw: list[list[str]] = []
    for segment in segments[first_tag:]:
        if "=" in segment:
            raw.append(list(segment.partition("=")[::2]))
        else:
            raw[-1][1] += ":" + segment
    tags: list[tuple[str, str]] = []
    for raw_key, raw_value in raw:
        key, value = unquote(raw_key), unquote(raw_value)
        if not NAME_RE.fullmatch(key) or not value:
            return []
        tags.append((key, value))
    out = []
    for split in range(1, len(ids)):
        gateway = unquote(":".join(ids[:split]))
        device = unquote(":".join(ids[split:]))
        if ID_RE.fullmatch(gateway) and ID_RE.fullmatch(device):
            out.append(EntityRef(type_, gateway, device, tuple(sorted(tags))))
    return out


# ---------------------------------------------------------------------------------------------
# Vocabulary: unit codes and the @context

#: The vocabulary's units (telemetry.MEASUREMENTS) as UN/CEFACT Recommendation 20 common
#: codes, NGSI-LD's ``unitCode``. ``veh/h`` has no code and is sent without one.
UNIT_CODES: Final[Mapping[str, str]] = {
    "km/h": "KMH",
    "1": "C62",
    "s": "SEC",
    "deg": "DD",
    "ug/m3": "GQ",
    "mg/m3": "GP",
    "Cel": "CEL",
    "dB(A)": "2N",
    "m3/h": "MQH",
    "bar": "BAR",
    "m3": "MTQ",
    "W": "WTT",
    "var": "D44",
    "kWh": "KWH",
    "V": "VLT",
    "A": "AMP",
    "Hz": "HTZ",
}

#: Smart Data Models subject of each known type (its terms live under that namespace).
_SUBJECTS: Final[Mapping[str, str]] = {
    "TrafficFlowObserved": "dataModel.Transportation",
    "Vehicle": "dataModel.Transportation",
    "OffStreetParking": "dataModel.Parking",
    "AirQualityObserved": "dataModel.Environment",
    "NoiseLevelObserved": "dataModel.Environment",
    "WaterConsumptionObserved": "dataModel.WaterConsumption",
    "ThreePhaseAcMeasurement": "dataModel.Energy",
}
#: Types whose Smart Data Model has ``dateObserved`` (the observation's time).
_DATE_OBSERVED: Final = frozenset(
    {"TrafficFlowObserved", "AirQualityObserved", "NoiseLevelObserved",
     "WaterConsumptionObserved"}
)
#: Reading tags renamed to their Smart Data Models attribute (integer when numeric).
_TAG_ATTRS: Final[Mapping[str, Mapping[str, str]]] = {"TrafficFlowObserved": {"lane": "laneId"}}
#: Members NGSI-LD reserves on an entity: a field with such a name is not shown.
_RESERVED: Final = frozenset(
    {"id", "type", "scope", "location", "observationSpace", "operationSpace", "createdAt",
     "modifiedAt", "deletedAt", "@context", "@id", "@type"}
)
_POSITION: Final = ("latitude", "longitude")


def _build_terms() -> dict[str, str]:
    terms: dict[str, str] = {
        "areaServed": _SDM + "areaServed",
        "dateObserved": _SDM + "dateObserved",
        "laneId": _SDM + "dataModel.Transportation/laneId",
    }
    for name, spec in MEASUREMENTS.items():
        subject = _SUBJECTS.get(name)
        if subject is None:
            continue
        terms.setdefault(name, f"{_SDM}{subject}/{name}")
        for field in spec.fields:
            if name == "Vehicle" and field in _POSITION:
                continue  # folded into location
            terms.setdefault(field, f"{_SDM}{subject}/{field}")
    return terms


_TERMS: Final = _build_terms()
_IRIS: Final = {iri: term for term, iri in _TERMS.items()}


def context_document() -> dict[str, Any]:
    """The @context the API serves: its terms inline, then the NGSI-LD core context."""
    return {"@context": [dict(sorted(_TERMS.items())), CORE_CONTEXT]}


def term_iri(term: str) -> str:
    """The IRI a short name expands to under the served @context."""
    return _TERMS.get(term, _DEFAULT_VOCAB + term)


def expand_term(name: str) -> str:
    """A short name from a type/attribute given as a name or as its full IRI."""
    if name in _IRIS:
        return _IRIS[name]
    if name.startswith(_DEFAULT_VOCAB):
        return name[len(_DEFAULT_VOCAB):]
    return name


# ---------------------------------------------------------------------------------------------
# Entities


def _unit(measurement: str, field: str) -> str | None:
    spec = MEASUREMENTS.get(measurement)
    if spec is None or field not in spec.fields:
        return None
    return UNIT_CODES.get(spec.fields[field].unit)


def _position(latest: Latest, location: Location | None) -> tuple[list[float], str | None] | None:
    """GeoJSON position [lon, lat(, alt)] and its observedAt (None for a fixed site)."""
    lat, lon = latest.fields.get("latitude"), latest.fields.get("longitude")
    if (
        isinstance(lat, int | float) and isinstance(lon, int | float)
        and not isinstance(lat, bool) and not isinstance(lon, bool)
        and -90 <= lat <= 90 and -180 <= lon <= 180
    ):
        return [float(lon), float(lat)], latest.time
    if location is not None:
        coords = [location.lon, location.lat]
        if location.alt is not None:
            coords.append(location.alt)
        return coords, None
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _tag_attrs(latest: Latest) -> dict[str, Any]:
    renames = _TAG_ATTRS.get(latest.measurement, {})
    out: dict[str, Any] = {}
    for key, value in latest.tags.items():
        name = renames.get(key, key)
        if name in _RESERVED:
            continue
        numeric = name != key and re.fullmatch(r"[0-9]{1,9}", value) is not None
        out[name] = int(value) if numeric else value
    return out


def attribute_values(latest: Latest) -> dict[str, Any]:
    """Attribute name -> plain value, what ``q`` and ``attrs`` look at (no ``location``)."""
    values: dict[str, Any] = {}
    for name, value in latest.fields.items():
        if name in _RESERVED or (latest.measurement == "Vehicle" and name in _POSITION):
            continue
        values[name] = value
    values.update(_tag_attrs(latest))
    if latest.area:
        values["areaServed"] = latest.area
    if latest.measurement in _DATE_OBSERVED:
        values["dateObserved"] = dt.datetime.fromtimestamp(latest.ts_ns / 1e9, dt.UTC)
    return values


def entity(
    latest: Latest,
    location: Location | None,
    *,
    attrs: frozenset[str] | None,
    key_values: bool,
) -> dict[str, Any]:
    """One entity, normalized (clause 4.5.1) or simplified (``keyValues``, clause 4.5.4).

    Fields become Properties with ``observedAt`` (device time) and ``unitCode``; reading tags
    and the device's area (``areaServed``) Properties; ``dateObserved`` a DateTime Property
    where the data model has it; ``location`` a GeoProperty (the live latitude/longitude of
    a reading that has them, such as a Vehicle's, else the device's announced location).
    """
    body: dict[str, Any] = {
        "id": entity_id(latest.measurement, latest.gateway, latest.device, latest.tags),
        "type": latest.measurement,
    }
    observed = latest.time
    for name, value in attribute_values(latest).items():
        if attrs is not None and name not in attrs:
            continue
        if name == "dateObserved":
            value = {"@type": "DateTime", "@value": observed}
        if key_values:
            body[name] = value
            continue
        prop: dict[str, Any] = {"type": "Property", "value": value}
        if name in latest.fields:
            prop["observedAt"] = observed
            unit = _unit(latest.measurement, name)
            if unit is not None:
                prop["unitCode"] = unit
        body[name] = prop
    if attrs is None or "location" in attrs:
        position = _position(latest, location)
        if position is not None:
            point = {"type": "Point", "coordinates": position[0]}
            if key_values:
                body["location"] = point
            else:
                geo: dict[str, Any] = {"type": "GeoProperty", "value": point}
                if position[1] is not None:
                    geo["observedAt"] = position[1]
                body["location"] = geo
    return body


def has_location(latest: Latest, location: Location | None) -> tuple[float, float] | None:
    """(lon, lat) of the entity's location, or None."""
    position = _position(latest, location)
    return None if position is None else (position[0][0], position[0][1])


# ---------------------------------------------------------------------------------------------
# q: the subset of the NGSI-LD query language (clause 4.9) served here
#
#   q      = term *(";" term)                  ";" is AND
#   term   = attr [op value]                   attr alone: the attribute exists
#   op     = "==" / "!=" / ">" / ">=" / "<" / "<="
#   value  = number / "quoted string" / true / false / DateTime
#          / value ".." value / value *("," value)     ranges and lists with == and != only

_OPS: Final = ("!~=", "~=", "==", "!=", ">=", "<=", ">", "<")
Op = Literal["==", "!=", ">", ">=", "<", "<="]
Scalar = float | str | bool | dt.datetime


@dataclass(frozen=True, slots=True)
class Term:
    attr: str
    op: Op | None = None
    values: tuple[Scalar, ...] = ()
    range: tuple[Scalar, Scalar] | None = None

    def matches(self, attrs: Mapping[str, Any]) -> bool:
        if self.attr not in attrs:
            return False
        if self.op is None:
            return True
        actual = attrs[self.attr]
        if self.range is not None:
            lo, hi = self.range
            inside = _compare(actual, ">=", lo) and _compare(actual, "<=", hi)
            return inside if self.op == "==" else (_comparable(actual, lo) and not inside)
        if self.op == "==":
            return any(_compare(actual, "==", v) for v in self.values)
        if self.op == "!=":
            return all(_compare(actual, "!=", v) for v in self.values)
        return _compare(actual, self.op, self.values[0])


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed ``q``: every term must match."""

    terms: tuple[Term, ...]

    def matches(self, attrs: Mapping[str, Any]) -> bool:
        return all(term.matches(attrs) for term in self.terms)


def _kind(value: object) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dt.datetime):
        return "datetime"
    return None


def _comparable(actual: object, expected: object) -> bool:
    kind = _kind(actual)
    return kind is not None and kind == _kind(expected)


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if not _comparable(actual, expected):
        return False
    if isinstance(actual, bool) and op not in ("==", "!="):
        return False
    match op:
        case "==":
            return bool(actual == expected)
        case "!=":
            return bool(actual != expected)
        case ">":
            return bool(actual > expected)
        case ">=":
            return bool(actual >= expected)
        case "<":
            return bool(actual < expected)
        case _:
            return bool(actual <= expected)


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise BadRequestData("q: unterminated string (a \" without its closing \")",
                             parameter="q")
    parts.append("".join(current))
    return parts


def _scalar(text: str) -> Scalar:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        inner = text[1:-1]
        if '"' in inner:
            raise BadRequestData(f"q: bad string {text!r}", parameter="q")
        return inner
    if text in ("true", "false"):
        return text == "true"
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            raise BadRequestData(f"q: {text!r} is not a finite number", parameter="q")
        return number
    if re.fullmatch(r"\d{4}-\d\d-\d\d(T[0-9:.]+(Z|[+-]\d\d:?\d\d)?)?", text):
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            moment = None
        if moment is not None:
            return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    raise BadRequestData(
        f"q: cannot read the value {text[:100]!r}: numbers, \"quoted strings\", true, false "
        "and DateTimes (2024-01-31T12:00:00Z) are understood", parameter="q",
    )


def parse_q(text: str) -> Query:
    """Parse ``q``; :class:`BadRequestData` if malformed, :class:`OperationNotSupported` for
    valid NGSI-LD this subset does not evaluate (``|``, parentheses, ``~=``, attribute paths).
    """
    if len(text) > 2000:
        raise BadRequestData("q: longer than 2000 characters", parameter="q")
    if not text.strip():
        raise BadRequestData("q: empty query", parameter="q")
    unquoted = re.sub(r'"[^"]*"', '""', text)
    for token, what in (("|", "OR (|)"), ("(", "parentheses"), (")", "parentheses"),
                        ("~=", "pattern matching (~=, !~=)"), ("[", "compound values ([...])")):
        if token in unquoted:
            raise OperationNotSupported(
                f"q: {what} is not supported here; terms joined by ';' (AND) with ==, !=, >, "
                ">=, <, <= are", parameter="q",
            )
    terms = []
    for raw in _split_outside_quotes(text, ";"):
        part = raw.strip()
        match = re.match(r"[A-Za-z@][A-Za-z0-9_@.:/#-]*", part)
        if match is None:
            raise BadRequestData(f"q: {part[:100]!r} does not start with an attribute name",
                                 parameter="q")
        attr, rest = match.group(0), part[match.end():]
        if "." in attr and not attr.startswith(("http://", "https://")):
            raise OperationNotSupported(
                f"q: attribute paths ({attr!r}: sub-attributes, observedAt) are not supported "
                "here; use attribute names", parameter="q",
            )
        attr = expand_term(attr)
        if not NAME_RE.fullmatch(attr):
            raise BadRequestData(f"q: {attr[:100]!r} is not an attribute name", parameter="q")
        if not rest:
            terms.append(Term(attr))
            continue
        op = next((o for o in _OPS if rest.startswith(o)), None)
        if op is None:
            raise BadRequestData(f"q: unknown operator in {part[:100]!r}", parameter="q")
        value = rest[len(op):].strip()
        if not value:
            raise BadRequestData(f"q: {part[:100]!r} has no value", parameter="q")
        if ".." in value and not value.startswith('"'):
            lo, _, hi = value.partition("..")
            if op not in ("==", "!="):
                raise BadRequestData("q: a range (a..b) needs == or !=", parameter="q")
            low, high = _scalar(lo.strip()), _scalar(hi.strip())
            if not _comparable(low, high):
                raise BadRequestData("q: both ends of a range need the same type", parameter="q")
            terms.append(Term(attr, cast(Op, op), (), (low, high)))
            continue
        items = _split_outside_quotes(value, ",")
        if len(items) > 1 and op not in ("==", "!="):
            raise BadRequestData("q: a list of values needs == or !=", parameter="q")
        values = tuple(_scalar(item.strip()) for item in items)
        terms.append(Term(attr, cast(Op, op), values))
    return Query(tuple(terms))


# ---------------------------------------------------------------------------------------------
# Geo-query: georel=near;maxDistance==N (or minDistance) around a Point, distances in metres

_EARTH_RADIUS_M: Final = 6_371_008.8
_GEORELS: Final = ("equals", "disjoint", "intersects", "within", "contains", "overlaps")
_GEOMETRIES: Final = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon",
                      "MultiPolygon")


@dataclass(frozen=True, slots=True)
class GeoQuery:
    lon: float
    lat: float
    max_distance: float | None = None
    min_distance: float | None = None

    def matches(self, lon: float, lat: float) -> bool:
        distance = haversine_m(self.lon, self.lat, lon, lat)
        if self.max_distance is not None and distance > self.max_distance:
            return False
        return not (self.min_distance is not None and distance < self.min_distance)


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres on the mean Earth radius."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def parse_georel(
    georel: str | None, geometry: str | None, coordinates: str | None
) -> GeoQuery | None:
    """The geo-query of ``georel``/``geometry``/``coordinates`` (clause 4.10), or None."""
    if georel is None and geometry is None and coordinates is None:
        return None
    if georel is None or geometry is None or coordinates is None:
        raise BadRequestData("a geo-query needs georel, geometry and coordinates together",
                             parameter="georel")
    match = re.fullmatch(r"near;(maxDistance|minDistance)==(\d+(?:\.\d+)?)", georel)
    if match is None:
        if georel in _GEORELS:
            raise OperationNotSupported(
                f"georel={georel} is not supported here; near;maxDistance==<metres> and "
                "near;minDistance==<metres> around a Point are", parameter="georel",
            )
        raise BadRequestData(
            f"georel {georel[:100]!r} is not near;maxDistance==<metres>, "
            "near;minDistance==<metres> or one of " + ", ".join(_GEORELS), parameter="georel",
        )
    if geometry != "Point":
        if geometry in _GEOMETRIES:
            raise OperationNotSupported("georel=near needs geometry=Point here",
                                        parameter="geometry")
        raise BadRequestData(f"geometry {geometry[:100]!r} is not a GeoJSON geometry type",
                             parameter="geometry")
    try:
        position = json.loads(coordinates)
    except ValueError:
        position = None
    if (
        not isinstance(position, list) or len(position) not in (2, 3)
        or not all(_is_number(v) and math.isfinite(v) for v in position)
        or not (-180 <= position[0] <= 180 and -90 <= position[1] <= 90)
    ):
        raise BadRequestData(
            "coordinates must be a GeoJSON position [longitude, latitude] in degrees",
            parameter="coordinates",
        )
    distance = float(match.group(2))
    if match.group(1) == "maxDistance":
        return GeoQuery(float(position[0]), float(position[1]), max_distance=distance)
    return GeoQuery(float(position[0]), float(position[1]), min_distance=distance)


def names(values: Iterable[str]) -> list[str]:
    """Short names of comma-separated type or attribute names given as names or IRIs."""
    return [expand_term(v.strip()) for v in values if v.strip()]


