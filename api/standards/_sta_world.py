"""The SensorThings entities of one request (:class:`World`), from the live state, the
inventory and InfluxDB; the mapping is drawn in ``_sta_routes.py``, the ids in ``_sta.py``.

Observations and HistoricalLocations are read one series per InfluxDB query
(:class:`api.storage.ObservationQuery`, :func:`api.storage.select_entity_history`); a request
spends at most :data:`MAX_QUERIES` of them (``$expand`` included), past that it is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from api._errors import BadParameter, NotFound
from api._params import iso
from api._services import Services
from api.standards import _ngsild as ld
from api.standards import _sta as sta
from api.state import Latest, series_key
from api.storage import ObservationQuery, select_entity_history
from telemetry import ID_RE, MEASUREMENTS, NAME_RE, Location

__all__ = ["MAX_QUERIES", "NAVIGATION", "SETS", "Row", "World", "page"]

MAX_QUERIES: Final = 50
SETS: Final = ("Things", "Locations", "HistoricalLocations", "Sensors", "ObservedProperties",
                "Datastreams", "Observations", "FeaturesOfInterest")
_SINGULAR: Final = {"Thing": "Things", "Location": "Locations", "Sensor": "Sensors",
                    "ObservedProperty": "ObservedProperties", "Datastream": "Datastreams",
                    "FeatureOfInterest": "FeaturesOfInterest",
                    "HistoricalLocation": "HistoricalLocations", "Observation": "Observations"}
#: Navigation properties of each entity set: name -> (target set, is a collection).
NAVIGATION: Final[dict[str, dict[str, tuple[str, bool]]]] = {
    "Things": {"Locations": ("Locations", True), "HistoricalLocations":
               ("HistoricalLocations", True), "Datastreams": ("Datastreams", True)},
    "Locations": {"Things": ("Things", True), "HistoricalLocations":
                  ("HistoricalLocations", True)},
    "HistoricalLocations": {"Thing": ("Things", False), "Locations": ("Locations", True)},
    "Sensors": {"Datastreams": ("Datastreams", True)},
    "ObservedProperties": {"Datastreams": ("Datastreams", True)},
    "Datastreams": {"Thing": ("Things", False), "Sensor": ("Sensors", False),
                    "ObservedProperty": ("ObservedProperties", False),
                    "Observations": ("Observations", True)},
    "Observations": {"Datastream": ("Datastreams", False),
                     "FeatureOfInterest": ("FeaturesOfInterest", False)},
    "FeaturesOfInterest": {"Observations": ("Observations", True)},
}
_GEOJSON: Final = "application/geo+json"
_OM: Final = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
_UCUM: Final = "http://unitsofmeasure.org/ucum.html#"


# ---------------------------------------------------------------------------------------------
# The entities, from the live state and the inventory


@dataclass(frozen=True, slots=True)
class Row:
    """One entity: its set, id, JSON properties, and what its navigation reads from."""

    set: str
    id: str
    props: dict[str, Any]
    gateway: str = ""
    device: str = ""
    latest: Latest | None = None
    field: str = ""
    measurement: str = ""
    ts_ns: int = 0


def _point(location: Location) -> dict[str, Any]:
    coords = [location.lon, location.lat]
    if location.alt is not None:
        coords.append(location.alt)
    return {"type": "Point", "coordinates": coords}


def _live_position(latest: Latest) -> dict[str, Any] | None:
    lat, lon = latest.fields.get("latitude"), latest.fields.get("longitude")
    if isinstance(lat, int | float) and isinstance(lon, int | float) and not isinstance(
            lat, bool) and not isinstance(lon, bool) and -90 <= lat <= 90 and -180 <= lon <= 180:
        return {"type": "Point", "coordinates": [float(lon), float(lat)]}
    return None


def _datastream_id(latest: Latest, field: str) -> str:
    parts = [sta.encode(latest.gateway), sta.encode(latest.device),
             f"{latest.measurement}.{field}"]
    parts.extend(f"{sta.encode(k)}={sta.encode(v)}" for k, v in sorted(latest.tags.items()))
    return ":".join(parts)


def _observation_type(value: Any) -> str:
    if isinstance(value, bool):
        return _OM + "OM_TruthObservation"
    if isinstance(value, int):
        return _OM + "OM_CountObservation"
    if isinstance(value, float):
        return _OM + "OM_Measurement"
    return _OM + "OM_CategoryObservation"


class World:
    """The entities of one request, built once from the live state and the inventory."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._cache: dict[str, dict[str, Row]] = {}
        self.queries = 0

    def spend(self) -> None:
        self.queries += 1
        if self.queries > MAX_QUERIES:
            raise BadParameter(
                f"this request needs more than {MAX_QUERIES} InfluxDB queries: expand "
                "Observations of fewer Datastreams ($top) or page them", parameter="$expand")

    def rows(self, set_: str) -> dict[str, Row]:
        if set_ not in self._cache:
            build = getattr(self, "_" + set_.lower())
            self._cache[set_] = {row.id: row for row in build()}
        return self._cache[set_]

    def _series(self, only: str | None = None) -> Iterable[Latest]:
        """Every live series, or only those of gateway ``only``."""
        for (gw, _dev), series in self.services.live.by_device.items():
            if only is None or gw == only:
                yield from series.values()

    def of_gateway(self, set_: str, gw: str) -> list[Row]:
        """The Locations or Datastreams of one gateway: filtered from the whole set when this
        request built it already, else built for that gateway alone (an expanded Thing costs
        its own series, not the city's)."""
        cached = self._cache.get(set_)
        if cached is not None:
            return [r for r in cached.values() if r.gateway == gw]
        build = self._locations if set_ == "Locations" else self._datastreams
        return list(build(only=gw))

    def _things(self) -> Iterable[Row]:
        gateways = set(self.services.inventory.gateways)
        gateways.update(latest.gateway for latest in self._series())
        for gw in sorted(gateways):
            state = self.services.inventory.gateways.get(gw)
            properties: dict[str, Any] = {"state": state.state if state else "unknown"}
            if state is not None and state.agent:
                properties["agent"] = state.agent
            if state is not None and state.location is not None and state.location.area:
                properties["area"] = state.location.area
            devices = sorted(state.devices) if state is not None else []
            yield Row("Things", sta.encode(gw), {
                "name": gw, "description": f"gateway {gw}",
                "properties": {**properties, "devices": devices}}, gateway=gw)

    def _locations(self, only: str | None = None) -> Iterable[Row]:
        positions: dict[tuple[str, str], dict[str, Any]] = {}
        for latest in self._series(only):
            point = _live_position(latest)
            if point is not None:
                positions[(latest.gateway, latest.device)] = point
        gateways = self.services.inventory.gateways
        if only is None:
            states = sorted(gateways.items())
        else:
            states = [(only, gateways[only])] if only in gateways else []
        for gw, state in states:
            if state.location is not None:
                yield Row("Locations", sta.encode(gw), {
                    "name": f"{gw}", "description": f"location of gateway {gw}",
                    "encodingType": _GEOJSON, "location": _point(state.location)}, gateway=gw)
            for dev, device in sorted(state.devices.items()):
                point = positions.pop((gw, dev), None)
                if point is None and device.location is not None:
                    point = _point(device.location)
                if point is not None:
                    yield self._device_location(gw, dev, point)
        for (gw, dev), point in sorted(positions.items()):
            yield self._device_location(gw, dev, point)

    @staticmethod
    def _device_location(gw: str, dev: str, point: dict[str, Any]) -> Row:
        return Row("Locations", f"{sta.encode(gw)}:{sta.encode(dev)}", {
            "name": f"{gw}/{dev}", "description": f"location of device {dev} of {gw}",
            "encodingType": _GEOJSON, "location": point}, gateway=gw, device=dev)

    def _featuresofinterest(self) -> Iterable[Row]:
        for row in self.rows("Locations").values():
            if row.device:
                yield Row("FeaturesOfInterest", row.id, {
                    "name": row.props["name"], "description": f"where {row.device} observes",
                    "encodingType": _GEOJSON, "feature": row.props["location"]},
                    gateway=row.gateway, device=row.device)

    def _sensors(self) -> Iterable[Row]:
        devices: dict[tuple[str, str], str] = {}
        for gw, state in self.services.inventory.gateways.items():
            for dev, device in state.devices.items():
                devices[(gw, dev)] = device.kind
        for latest in self._series():
            devices.setdefault((latest.gateway, latest.device), "unknown")
        for (gw, dev), kind in sorted(devices.items()):
            yield Row("Sensors", f"{sta.encode(gw)}:{sta.encode(dev)}", {
                "name": dev, "description": f"{kind} device {dev} of gateway {gw}",
                "encodingType": "text/plain", "metadata": kind,
                "properties": {"gateway": gw, "kind": kind}}, gateway=gw, device=dev)

    def _observedproperties(self) -> Iterable[Row]:
        for measurement, spec in sorted(MEASUREMENTS.items()):
            for name, field in sorted(spec.fields.items()):
                yield Row("ObservedProperties", f"{measurement}.{name}", {
                    "name": name, "definition": ld.term_iri(name),
                    "description": field.description,
                    "properties": {"measurement": measurement, "unit": field.unit}},
                    field=name, measurement=measurement)

    def _datastreams(self, only: str | None = None) -> Iterable[Row]:
        for latest in sorted(self._series(only), key=lambda lt: (lt.gateway, lt.device,
                                                             lt.measurement,
                                                             sorted(lt.tags.items()))):
            yield from self._datastreams_of(latest)

    def datastream(self, id_: str) -> Row | None:
        """One Datastream by id: a lookup in the live state, not a scan of every series."""
        if "Datastreams" in self._cache:
            return self._cache["Datastreams"].get(id_)
        segments = id_.split(":")
        if len(segments) < 3 or len(segments) > 12:
            return None
        gw, dev = sta.decode(segments[0]), sta.decode(segments[1])
        measurement, dot, _field = segments[2].partition(".")
        tags: dict[str, str] = {}
        for segment in segments[3:]:
            key, eq, value = segment.partition("=")
            text_key, text_value = sta.decode(key), sta.decode(value)
            if not eq or text_key is None or text_value is None:
                return None
            tags[text_key] = text_value
        if gw is None or dev is None or not dot:
            return None
        series = self.services.live.by_device.get((gw, dev), {})
        latest = series.get(series_key(measurement, tags))
        if latest is None:
            return None
        return next((r for r in self._datastreams_of(latest) if r.id == id_), None)

    def _datastreams_of(self, latest: Latest) -> Iterable[Row]:
        """The Datastreams of one live series: one per field."""
        spec = MEASUREMENTS.get(latest.measurement)
        for name, value in sorted(latest.fields.items()):
            if not NAME_RE.fullmatch(name):
                continue
            field = spec.fields.get(name) if spec is not None else None
            unit = field.unit if field is not None else ""
            tags = "".join(f" {k}={v}" for k, v in sorted(latest.tags.items()))
            props: dict[str, Any] = {
                "name": f"{latest.gateway}/{latest.device} {latest.measurement}.{name}{tags}",
                "description": field.description if field is not None else name,
                "observationType": _observation_type(value),
                "unitOfMeasurement": {"name": unit or None, "symbol": unit or None,
                                      "definition": _UCUM + unit if unit else None},
                "phenomenonTime": f"{latest.time}/{latest.time}",
                "properties": {"gateway": latest.gateway, "device": latest.device,
                               "measurement": latest.measurement, "field": name,
                               **latest.tags},
            }
            yield Row("Datastreams", _datastream_id(latest, name), props,
                      gateway=latest.gateway, device=latest.device, latest=latest,
                      field=name)

    # -- navigation ------------------------------------------------------------------------

    async def navigate(self, row: Row, name: str, options: sta.Options,
                       ) -> tuple[list[Row], bool, int | None]:
        """(rows of one page, more after it, total when ``$count``) of a navigation."""
        match (row.set, name):
            case ("Datastreams", "Observations"):
                return await self.observations(row, options)
            case ("Things", "HistoricalLocations"):
                return await self.historical_locations(row.gateway, None, options)
            case ("Locations", "HistoricalLocations"):
                if not row.device:
                    return [], False, 0 if options.count else None
                return await self.historical_locations(row.gateway, row.device, options)
            case ("FeaturesOfInterest", "Observations"):
                raise sta.NotImplementedHere(
                    "FeaturesOfInterest(...)/Observations is not served: read Observations "
                    "through their Datastream")
        return page(self.related(row, name), options)

    def related(self, row: Row, name: str) -> list[Row]:
        match (row.set, name):
            case ("Things", "Locations") | ("Things", "Datastreams"):
                return self.of_gateway(name, row.gateway)
            case ("Locations", "Things") | ("HistoricalLocations", "Thing"):
                thing = self.rows("Things").get(sta.encode(row.gateway))
                return [thing] if thing else []
            case ("HistoricalLocations", "Locations"):
                return [Row("Locations", row.id, {
                    "name": f"{row.gateway}/{row.device}",
                    "description": f"position of {row.device} at {row.props['time']}",
                    "encodingType": _GEOJSON, "location": row.props["_location"]},
                    gateway=row.gateway, device=row.device)]
            case ("Sensors", "Datastreams"):
                return [r for r in self.rows("Datastreams").values()
                        if (r.gateway, r.device) == (row.gateway, row.device)]
            case ("ObservedProperties", "Datastreams"):
                return [r for r in self.rows("Datastreams").values()
                        if r.latest is not None and r.latest.measurement == row.measurement
                        and r.field == row.field]
            case ("Datastreams", "Thing"):
                thing = self.rows("Things").get(sta.encode(row.gateway))
                return [thing] if thing else []
            case ("Datastreams", "Sensor"):
                sensor = self.rows("Sensors").get(f"{sta.encode(row.gateway)}:"
                                                  f"{sta.encode(row.device)}")
                return [sensor] if sensor else []
            case ("Datastreams", "ObservedProperty"):
                assert row.latest is not None
                prop = self.rows("ObservedProperties").get(f"{row.latest.measurement}.{row.field}")
                return [prop] if prop else []
            case ("Observations", "Datastream"):
                ds = self.datastream(row.props["_datastream"])
                return [ds] if ds else []
            case ("Observations", "FeatureOfInterest"):
                foi = self.rows("FeaturesOfInterest").get(f"{sta.encode(row.gateway)}:"
                                                          f"{sta.encode(row.device)}")
                return [foi] if foi else []
        raise NotFound(f"{row.set} has no navigation property {name!r}")

    async def observations(self, ds: Row, options: sta.Options,
                           at_ns: int | None = None) -> tuple[list[Row], bool, int | None]:
        """A page of the Datastream's Observations (only the one at ``at_ns`` when given)."""
        latest = ds.latest
        assert latest is not None
        times, value = sta.observation_filter(options.filter)
        if at_ns is not None:
            times = [*times, ("=", at_ns)]
        descending = False
        for prop, desc in options.orderby:
            if prop not in ("phenomenonTime", "resultTime"):
                raise BadParameter("$orderby of Observations: phenomenonTime or resultTime "
                                   "(InfluxDB orders by time only)", parameter="$orderby")
            descending = desc
        tags = dict(latest.tags)
        spec = MEASUREMENTS.get(latest.measurement)
        for key in spec.tags if spec is not None else ():
            tags.setdefault(key, "")
        query = ObservationQuery(
            measurement=latest.measurement, gateway=latest.gateway, device=latest.device,
            tags=tags, field=ds.field, times=times, value=value, descending=descending,
            limit=options.top + 1, offset=options.skip,
        )
        total: int | None = None
        if options.count:
            self.spend()
            counted = await self.services.influx.query(query.render_count())
            total = int(counted[0].values[0][1]) if counted and counted[0].values else 0
        if options.top == 0:
            return [], total is not None and total > options.skip, total
        self.spend()
        series = await self.services.influx.query(query.render())
        values = [row for s in series for row in s.values if row[1] is not None]
        rows = [self._observation(ds, int(t), v) for t, v, *_ in values[:options.top]]
        return rows, len(values) > options.top, total

    def _observation(self, ds: Row, ts_ns: int, value: Any) -> Row:
        when = iso(ts_ns)
        return Row("Observations", f"{ds.id}:{ts_ns}", {
            "phenomenonTime": when, "resultTime": when, "result": value,
            "_datastream": ds.id}, gateway=ds.gateway, device=ds.device, field=ds.field,
            ts_ns=ts_ns)

    async def historical_locations(self, gw: str, dev: str | None, options: sta.Options,
                                   ) -> tuple[list[Row], bool, int | None]:
        """Stored positions of the gateway's vehicles (Vehicle latitude/longitude), newest
        first; one query per vehicle series."""
        if options.filter is not None or options.orderby:
            raise sta.NotImplementedHere("$filter and $orderby of HistoricalLocations are "
                                         "not supported here (newest first)")
        wanted = options.skip + options.top + 1
        if wanted > self.services.settings.max_points:
            raise BadParameter(f"$skip + $top of HistoricalLocations: at most "
                               f"{self.services.settings.max_points}", parameter="$skip")
        found: list[Row] = []
        for latest in list(self._series()):
            if latest.gateway != gw or (dev is not None and latest.device != dev) or \
                    _live_position(latest) is None or not ID_RE.fullmatch(latest.device):
                continue
            self.spend()
            series = await self.services.influx.query(select_entity_history(
                measurement=latest.measurement, gateway=gw, device=latest.device,
                tags=latest.tags, fields=["latitude", "longitude"], last=wanted, limit=wanted))
            for s in series:
                for t, lat, lon, *_ in s.values:
                    if lat is None or lon is None:
                        continue
                    ts = int(t)
                    found.append(Row("HistoricalLocations",
                                     f"{sta.encode(gw)}:{sta.encode(latest.device)}:{ts}",
                                     {"time": iso(ts), "_location": {
                                         "type": "Point", "coordinates": [lon, lat]}},
                                     gateway=gw, device=latest.device, ts_ns=ts))
        found.sort(key=lambda r: (-r.ts_ns, r.id))
        total = len(found) if options.count else None
        chunk = found[options.skip: options.skip + options.top]
        return chunk, len(found) > options.skip + options.top, total

    async def find(self, set_: str, id_: str) -> Row:
        """One entity by id; Observations and HistoricalLocations are read from InfluxDB."""
        if set_ == "Observations":
            head, _, ts = id_.rpartition(":")
            ds = self.datastream(head)
            if ds is None or not re.fullmatch(r"[0-9]{1,19}", ts):
                raise NotFound(f"no Observation {id_[:200]!r}")
            when = int(ts)
            rows, _, _ = await self.observations(ds, sta.Options(top=1), at_ns=when)
            exact = [r for r in rows if r.ts_ns == when]
            if not exact:
                raise NotFound(f"no Observation {id_[:200]!r}")
            return exact[0]
        if set_ == "HistoricalLocations":
            parts = sta.split_id(id_, 3)
            if parts is None or not re.fullmatch(r"[0-9]{1,19}", parts[2]):
                raise NotFound(f"no HistoricalLocation {id_[:200]!r}")
            rows, _, _ = await self.historical_locations(
                parts[0], parts[1], sta.Options(top=self.services.settings.max_points - 1))
            exact = [r for r in rows if r.id == id_]
            if not exact:
                raise NotFound(f"no HistoricalLocation {id_[:200]!r}")
            return exact[0]
        row = self.datastream(id_) if set_ == "Datastreams" else self.rows(set_).get(id_)
        if row is None:
            raise NotFound(f"no {set_[:-1] if set_ != 'ObservedProperties' else 'ObservedProperty'}"
                           f" {id_[:200]!r}")
        return row


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, int | float):
        return (2, value)
    return (3, str(value))


def page(rows: list[Row], options: sta.Options) -> tuple[list[Row], bool, int | None]:
    """Filter, order and page rows held in memory."""
    if options.filter is not None:
        for path in sta.filter_paths(options.filter):
            if path[:1].isupper() and not path.startswith("@"):
                raise sta.NotImplementedHere(
                    f"$filter: navigation paths ({path[:50]!r}) are not supported here",
                    parameter="$filter")
        tree = options.filter
        rows = [r for r in rows if sta.evaluate(tree, {"@iot.id": r.id, **r.props})]
    for prop, desc in reversed(options.orderby):
        rows = sorted(rows, key=lambda r: _sort_key(
            sta.value_at({"@iot.id": r.id, **r.props}, prop)), reverse=desc)
    total = len(rows) if options.count else None
    chunk = rows[options.skip: options.skip + options.top]
    return chunk, len(rows) > options.skip + options.top, total
