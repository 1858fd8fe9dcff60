"""NGSI-LD (ETSI GS CIM 009) view of the live state: ids, entities, errors, media types. No I/O.

The routes in ``_ngsild_routes.py`` and ``_ngsild_temporal.py`` feed these functions the
API's live state (what ``/v1/live`` serves); the q and geo-query subsets are in
``_ngsild_query.py``. Nothing here reads InfluxDB.

Entity ids (one entity per device, measurement and reading tags, i.e. per live series)::

    urn:ngsi-ld:<Type>:<gateway>:<device>[:<tag>=<value>]...
    urn:ngsi-ld:AirQualityObserved:air-gw-3:aq-1
    urn:ngsi-ld:TrafficFlowObserved:cabinet-017:loop-3:lane=1

``<Type>`` is the measurement (a Smart Data Models type); gateway, device, tag keys and
values are percent-encoded except ``A-Z a-z 0-9 . _ -`` (so a ``:`` inside an id is ``%3A``),
which keeps every id a valid RFC 8141 URN and tells the segments apart.

Errors are NGSI-LD ProblemDetails (``_ngsild_errors.py``), re-exported here.

@context: answers use the context the request named in its ``Link`` header
(:class:`Context`): the served context (its terms + the core context, the default) or the
core context alone (then this API's terms expand to, and are answered as, full IRIs). Any
other context is refused with ``LdContextNotAvailable``: the server never fetches a remote
document on a client's behalf (no outbound requests, no SSRF, no unbounded latency).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

from api.standards._ngsild_errors import (
    ERRORS,
    BadRequestData,
    InvalidRequest,
    LdContextNotAvailable,
    NgsiLdError,
    NoMultiTenantSupport,
    NotAcceptable,
    OperationNotSupported,
    ResourceNotFound,
    TooComplexQuery,
    etsi_problem,
)
from api.state import Latest
from telemetry import ID_RE, MEASUREMENTS, NAME_RE, Location

__all__ = [
    "CORE_CONTEXT",
    "ERRORS",
    "JSON",
    "LD_JSON",
    "LINK_REL",
    "UNIT_CODES",
    "BadRequestData",
    "Context",
    "EntityRef",
    "InvalidRequest",
    "LdContextNotAvailable",
    "NgsiLdError",
    "NoMultiTenantSupport",
    "NotAcceptable",
    "OperationNotSupported",
    "ResourceNotFound",
    "TooComplexQuery",
    "attribute_values",
    "context_document",
    "entity",
    "entity_id",
    "etsi_problem",
    "expand_term",
    "has_location",
    "names",
    "negotiate",
    "parse_entity_id",
    "term_iri",
]

JSON: Final = "application/json"
LD_JSON: Final = "application/ld+json"
LINK_REL: Final = "http://www.w3.org/ns/json-ld#context"
#: The NGSI-LD core @context (version 1.7). Every NGSI-LD processor ships it built in.
CORE_CONTEXT: Final = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.7.jsonld"
_DEFAULT_VOCAB: Final = "https://uri.etsi.org/ngsi-ld/default-context/"
_CORE_NS: Final = "https://uri.etsi.org/ngsi-ld/"
#: Attribute terms the core context defines (``ngsi-ld:<term>``); they expand there under
#: every context, never to the default vocabulary.
_CORE_TERMS: Final = frozenset(
    {"location", "observationSpace", "operationSpace", "observedAt", "createdAt",
     "modifiedAt", "deletedAt", "unitCode", "datasetId", "instanceId"}
)
_CORE_URL_RE: Final = re.compile(
    r"https?://uri\.etsi\.org/ngsi-ld/v1/ngsi-ld-core-context(?:-v1\.[0-9]{1,2})?\.jsonld")
_SDM: Final = "https://smartdatamodels.org/"

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


def names(values: Iterable[str], context: Context | None = None) -> list[str]:
    """Short names of type or attribute names given as terms (of ``context``) or IRIs."""
    expand = context.expand if context is not None else expand_term
    return [expand(v.strip()) for v in values if v.strip()]


def term_iri(term: str) -> str:
    """The IRI a short name expands to under the served @context (core terms per the core
    context, this API's terms per its own, anything else under the default vocabulary)."""
    if term in _CORE_TERMS:
        return _CORE_NS + term
    return _TERMS.get(term, _DEFAULT_VOCAB + term)


def expand_term(name: str) -> str:
    """A short name from a type/attribute given as a name or as its full IRI (served
    context); an IRI no name expands to is returned as is (it then matches nothing)."""
    if name in _IRIS:
        return _IRIS[name]
    if name.startswith(_CORE_NS) and name[len(_CORE_NS):] in _CORE_TERMS:
        return name[len(_CORE_NS):]
    if name.startswith(_DEFAULT_VOCAB):
        short = name[len(_DEFAULT_VOCAB):]
        return name if short in _TERMS or short in _CORE_TERMS else short
    return name


@dataclass(frozen=True, slots=True)
class Context:
    """The @context a request is answered under: ``url`` is what the answer names (in its
    ``Link`` header or its ``@context`` member); ``own`` is the served context (this API's
    terms + core), else the core context alone.

    Internally attributes and types are the served context's short names; :meth:`expand`
    turns a client's term into one and :meth:`compact` turns one into the client's term.
    """

    url: str
    own: bool = True

    def expand(self, term: str) -> str:
        if ":" in term:
            return expand_term(term)
        if self.own or term in _CORE_TERMS or term not in _TERMS:
            return term
        return _DEFAULT_VOCAB + term  # under the core context alone: not this API's term

    def compact(self, name: str) -> str:
        if self.own or name in _CORE_TERMS:
            return name
        return _TERMS.get(name, name)

    @classmethod
    def choose(cls, urls: list[str], own_url: str) -> Context:
        """The context of a request that named ``urls`` (its Link header, or the @context
        of its body); :class:`LdContextNotAvailable` for any other document."""
        if not urls:
            return cls(own_url, True)
        own = urlsplit(own_url)
        kinds = set()
        for url in urls:
            split = urlsplit(url)
            if (split.netloc, split.path) == (own.netloc, own.path):
                kinds.add("own")
            elif _CORE_URL_RE.fullmatch(url):
                kinds.add("core")
            else:
                raise LdContextNotAvailable(
                    f"@context {url[:200]!r} is not used here: send this API's context "
                    f"<{own_url}>, the NGSI-LD core context, or none (this server fetches no "
                    "remote @context)", parameter="Link", location="header")
        if "own" in kinds:
            return cls(own_url, True)
        return cls(CORE_CONTEXT, False)


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
    context: Context | None = None,
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
    if context is not None and not context.own:
        body = {k if k in ("id", "type") else context.compact(k): v for k, v in body.items()}
        body["type"] = context.compact(body["type"])
    return body


def has_location(latest: Latest, location: Location | None) -> tuple[float, float] | None:
    """(lon, lat) of the entity's location, or None."""
    position = _position(latest, location)
    return None if position is None else (position[0][0], position[0][1])
