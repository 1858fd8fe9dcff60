// The dashboard's picture of the city: devices from the inventory, latest state per layer,
// updated from REST snapshots and from live events. No DOM here.

export const LAYERS = ["links", "vehicles", "parking", "air"];
export const MEASUREMENT_LAYER = {
  TrafficFlowObserved: "links",
  Vehicle: "vehicles",
  OffStreetParking: "parking",
  AirQualityObserved: "air",
};
/** The field charted first when a device of this measurement is selected. */
export const PRIMARY_FIELD = {
  TrafficFlowObserved: "averageVehicleSpeed",
  Vehicle: "speed",
  OffStreetParking: "availableSpotNumber",
  AirQualityObserved: "pm25",
  NoiseLevelObserved: "LAeq",
  WaterConsumptionObserved: "flow",
  ThreePhaseAcMeasurement: "activePower",
};
export const CONGESTION = ["free", "moderate", "heavy", "severe", "unknown"];
export const AQI_BANDS_DEFAULT = ["good", "fair", "moderate", "poor", "very poor", "extremely poor"];
const DEFAULT_FREE_FLOW = 50;
const TRAIL = 40;

export const keyOf = (gateway, device) => `${gateway}/${device}`;

/** Congestion level from speed against free-flow speed (the API's thresholds). */
export function congestion(speed, freeFlow) {
  if (typeof speed !== "number" || !(freeFlow > 0)) return ["unknown", null];
  const ratio = speed / freeFlow;
  if (ratio >= 0.75) return ["free", ratio];
  if (ratio >= 0.5) return ["moderate", ratio];
  if (ratio >= 0.3) return ["heavy", ratio];
  return ["severe", ratio];
}

/** A link's drawn shape: meta.geometry as JSON [[lat, lon], ...] (2+ points), else null. */
export function parseGeometry(meta) {
  const raw = meta && meta.geometry;
  if (typeof raw !== "string" || raw.length > 20000) return null;
  try {
    const points = JSON.parse(raw);
    if (!Array.isArray(points) || points.length < 2) return null;
    const out = [];
    for (const p of points) {
      if (!Array.isArray(p) || p.length < 2) return null;
      const [lat, lon] = [Number(p[0]), Number(p[1])];
      if (!Number.isFinite(lat) || !Number.isFinite(lon) || Math.abs(lat) > 90 || Math.abs(lon) > 180) return null;
      out.push([lat, lon]);
    }
    return out;
  } catch {
    return null;
  }
}

export class CityModel {
  constructor() {
    this.devices = new Map();   // key -> device from /v1/devices
    this.gateways = new Map();  // id -> gateway summary
    this.layers = { links: new Map(), vehicles: new Map(), parking: new Map(), air: new Map() };
    this.alerts = new Map();    // id -> alert
    this.bands = AQI_BANDS_DEFAULT;
    this.breakpoints = { pm25: [10, 20, 25, 50, 75], pm10: [20, 40, 50, 100, 150], no2: [40, 90, 120, 230, 340], o3: [50, 100, 130, 240, 380] };
    this.units = {};            // measurement -> field -> unit
    this.dirty = new Set();     // keys of map features to redraw
    this.geometryChanged = true;
    this.lastEventAt = null;
    this.staleAfterS = 300;     // the API's stale_after_s (GET /v1/dashboard/config)
    this.adherence = null;      // {late, bunched, rows: key -> row} from /v1/transport/adherence
  }

  // -- staleness ------------------------------------------------------------------------
  /**
   * Whether a feature's data is not live: its gateway is offline (or silent), or its last
   * reading arrived longer ago than it usually takes (three of its intervals between
   * readings, at least 15 s) or than the API's stale_after_s. Ages are by this browser's
   * clock at arrival, so simulated device clocks ahead or behind do not matter.
   * Returns null when live, else {why, ageS}.
   */
  staleness(layer, key, now = Date.now()) {
    const f = this.layers[layer] && this.layers[layer].get(key);
    if (!f) return null;
    const g = this.gateways.get(f.gateway);
    const ageS = f.seenAt ? (now - f.seenAt) / 1000 : null;
    if (g && !g.online) {
      const since = g.since ? (now - Date.parse(g.since)) / 1000 : null;
      return { why: `gateway ${g.id} ${g.state === "offline" ? "offline" : "silent"}`, ageS: ageS ?? since, sinceS: since };
    }
    if (ageS === null) return null;
    const limit = Math.min(this.staleAfterS, f.intervalS ? Math.max(15, 3 * f.intervalS) : this.staleAfterS);
    if (ageS > limit) return { why: "no recent reading", ageS };
    return null;
  }

  _arrived(f, time, live) {
    const now = Date.now();
    if (live) {
      if (f.seenAt) {
        const gap = (now - f.seenAt) / 1000;
        if (gap > 0.05) f.intervalS = f.intervalS ? 0.8 * f.intervalS + 0.2 * gap : gap;
      }
      f.seenAt = now;
    } else {
      // From a snapshot: the reading's age by its own time, never in the future.
      const t = Date.parse(time);
      const seen = Number.isFinite(t) ? Math.min(now, t) : now;
      f.seenAt = Math.max(f.seenAt || 0, seen);
    }
  }

  // -- KPIs -----------------------------------------------------------------------------
  /** Counts for the KPI strip, computed like the API computes its lists (one per row). */
  kpis(now = Date.now()) {
    const levels = { free: 0, moderate: 0, heavy: 0, severe: 0, unknown: 0 };
    for (const f of this.layers.links.values()) {
      for (const lane of f.lanes.values()) levels[lane.level || "unknown"] += 1;
    }
    let parkingFull = 0;
    for (const f of this.layers.parking.values()) if (isFull(f)) parkingFull += 1;
    let airPoor = 0;
    for (const f of this.layers.air.values()) if (this.aqiLevel(f) >= 4) airPoor += 1;
    let offline = 0;
    let longest = 0;
    for (const g of this.gateways.values()) {
      if (g.online) continue;
      offline += 1;
      const since = Date.parse(g.since);
      if (Number.isFinite(since)) longest = Math.max(longest, (now - since) / 1000);
    }
    return { levels, parkingFull, airPoor, offline, longestOfflineS: longest };
  }

  /** Schedule adherence (GET /v1/transport/adherence): its summary and rows by vehicle. */
  setAdherence(page) {
    const rows = new Map();
    for (const r of page.items) rows.set(keyOf(r.gateway, r.device), r);
    this.adherence = { late: page.summary.late, bunched: page.summary.bunched, rows };
  }

  /** EAQI level 1 (good) to 6 (extremely poor) of an air station; 0 when unknown. */
  aqiLevel(f) {
    return f && f.band ? this.bands.indexOf(f.band) + 1 : 0;
  }

  /** Which features a KPI counts (the map's filter when the KPI is clicked). */
  kpiMatch(kpi, layer, key) {
    const f = this.layers[layer] && this.layers[layer].get(key);
    if (!f) return false;
    if (kpi === "heavy" || kpi === "severe") return layer === "links" && [...f.lanes.values()].some((l) => l.level === kpi);
    if (kpi === "parking-full") return layer === "parking" && isFull(f);
    if (kpi === "air-poor") return layer === "air" && this.aqiLevel(f) >= 4;
    if (kpi === "late" || kpi === "bunched") {
      const row = layer === "vehicles" && this.adherence && this.adherence.rows.get(key);
      return Boolean(row && row[kpi]);
    }
    if (kpi === "offline") {
      const g = this.gateways.get(f.gateway);
      return Boolean(g && !g.online);
    }
    return true;
  }

  /** The area of the fixed device nearest to a point (for vehicles, whose birth area is
   * where they started, not where they are). */
  areaNear(lat, lon) {
    let best = null;
    let bestD = Infinity;
    const k = Math.cos((lat * Math.PI) / 180);
    for (const d of this.devices.values()) {
      if (!d.location || !d.area || this.layers.vehicles.has(d.key)) continue;
      const dy = d.location.lat - lat;
      const dx = (d.location.lon - lon) * k;
      const dist = dx * dx + dy * dy;
      if (dist < bestD) {
        bestD = dist;
        best = d.area;
      }
    }
    return best;
  }

  setVocabulary(vocab) {
    if (Array.isArray(vocab.aqi_bands) && vocab.aqi_bands.length) this.bands = vocab.aqi_bands;
    if (vocab.aqi_breakpoints) this.breakpoints = vocab.aqi_breakpoints;
    for (const [name, m] of Object.entries(vocab.measurements || {})) {
      this.units[name] = Object.fromEntries(Object.entries(m.fields || {}).map(([f, s]) => [f, s.unit]));
    }
  }

  /** The EAQI band of a station (worst pollutant) and each pollutant's band. */
  aqi(fields) {
    const per = {};
    let worst = -1;
    for (const [name, bounds] of Object.entries(this.breakpoints)) {
      const v = fields[name];
      if (typeof v !== "number" || !Number.isFinite(v) || v < 0) continue;
      let i = 0;
      while (i < bounds.length && v >= bounds[i]) i += 1;
      per[name] = this.bands[i];
      worst = Math.max(worst, i);
    }
    return [worst < 0 ? null : this.bands[worst], per];
  }

  /** The unit as announced (the device's birth, else the vocabulary), e.g. "ug/m3", "1". */
  rawUnit(measurement, field, device) {
    const fromDevice = device && device.measurements && device.measurements[measurement];
    return (fromDevice && fromDevice[field]) || (this.units[measurement] || {})[field] || "";
  }

  /** The unit to show ("" for counts and ratios, whose UCUM unit is "1"). */
  unit(measurement, field, device) {
    const fromDevice = device && device.measurements && device.measurements[measurement];
    const unit = (fromDevice && fromDevice[field]) || (this.units[measurement] || {})[field] || "";
    return unit === "1" || unit === "-" ? "" : unit;
  }

  setDevices(items) {
    const before = this.devices.size;
    for (const d of items) {
      const key = keyOf(d.gateway, d.id);
      const old = this.devices.get(key);
      d.key = key;
      d.geometry = parseGeometry(d.meta);
      this.devices.set(key, d);
      if (!old || JSON.stringify(old.location) !== JSON.stringify(d.location) || String(old.meta && old.meta.geometry) !== String(d.meta && d.meta.geometry)) {
        this.geometryChanged = true;
      }
      for (const layer of LAYERS) if (this.layers[layer].has(key)) this.dirty.add(key);
    }
    if (this.devices.size !== before) this.geometryChanged = true;
  }

  setGateways(items) {
    this.gateways = new Map(items.map((g) => [g.id, g]));
  }

  /** Where a feature is: its own reading (vehicles), else the device's announced location. */
  position(layer, key) {
    const f = this.layers[layer].get(key);
    if (layer === "vehicles" && f && typeof f.lat === "number" && typeof f.lon === "number") return [f.lat, f.lon];
    const d = this.devices.get(key);
    if (d && d.location) return [d.location.lat, d.location.lon];
    if (f && f.location) return [f.location.lat, f.location.lon];
    return null;
  }

  // -- REST snapshots -------------------------------------------------------------------
  setVehicles(items) {
    for (const v of items) {
      const key = keyOf(v.gateway, v.device);
      const f = this._feature("vehicles", key, v.gateway, v.device);
      Object.assign(f, {
        speed: v.speed, heading: v.heading, routeId: v.routeId, tripId: v.tripId,
        passengerCount: v.passengerCount, area: v.area, time: v.time, ts: v.ts_ns,
      });
      this._arrived(f, v.time, false);
      if (v.location) this._move(f, v.location.lat, v.location.lon);
      this.dirty.add(key);
    }
  }

  setLinks(items) {
    for (const l of items) {
      const key = keyOf(l.gateway, l.device);
      const f = this._feature("links", key, l.gateway, l.device);
      f.freeFlowSpeed = l.freeFlowSpeed;
      f.location = l.location;
      f.area = l.area;
      f.lanes.set(l.lane || "", {
        averageVehicleSpeed: l.averageVehicleSpeed, intensity: l.intensity,
        occupancy: l.occupancy, time: l.time, level: l.congestionLevel,
      });
      this._arrived(f, l.time, false);
      this._linkLevel(f);
      this.dirty.add(key);
    }
  }

  setParking(items) {
    for (const p of items) {
      const key = keyOf(p.gateway, p.device);
      const f = this._feature("parking", key, p.gateway, p.device);
      Object.assign(f, {
        free: p.availableSpotNumber, total: p.totalSpotNumber, occupancy: p.occupancy,
        location: p.location, area: p.area, time: p.time,
      });
      this._arrived(f, p.time, false);
      this.dirty.add(key);
    }
  }

  setAir(items) {
    for (const r of items) {
      const key = keyOf(r.gateway, r.device);
      const f = this._feature("air", key, r.gateway, r.device);
      f.fields = r.fields;
      f.area = r.area;
      f.time = r.time;
      [f.band, f.per] = this.aqi(r.fields);
      this._arrived(f, r.time, false);
      this.dirty.add(key);
    }
  }

  setAlerts(items) {
    this.alerts = new Map(items.map((a) => [a.id, a]));
  }

  // -- live events ----------------------------------------------------------------------
  /** Apply one event from the stream; return what changed ("map", "alerts", "gateways"). */
  apply(event) {
    this.lastEventAt = Date.now();
    if (event.type === "reading") return this._reading(event.reading);
    if (event.type === "alert") {
      const a = event.alert;
      if (event.state === "resolved") this.alerts.delete(a.id);
      else this.alerts.set(a.id, a);
      return "alerts";
    }
    if (event.type === "gateway") {
      const g = this.gateways.get(event.gateway);
      if (g) {
        g.state = event.state;
        g.online = event.state === "online";
        g.since = event.time;
      }
      // Its features turn stale (or live again) at once, not at the next staleness sweep.
      for (const layer of LAYERS) {
        for (const f of this.layers[layer].values()) if (f.gateway === event.gateway) this.dirty.add(f.key);
      }
      return "gateways";
    }
    return null;
  }

  _reading(r) {
    const layer = MEASUREMENT_LAYER[r.measurement];
    const key = keyOf(r.gateway, r.device);
    const g = this.gateways.get(r.gateway);
    if (g) g.last_seen = r.time;
    if (!layer) return null;
    const f = this._feature(layer, key, r.gateway, r.device);
    // Older readings never replace newer ones (replays from a gateway's spool).
    const lane = (r.tags && r.tags.lane) || "";
    const previous = layer === "links" ? (f.lanes.get(lane) || {}).ts : f.ts;
    if (previous && r.ts_ns && r.ts_ns < previous) return null;
    const x = r.fields || {};
    f.area = r.area ?? f.area;
    this._arrived(f, r.time, true);
    if (layer === "vehicles") {
      Object.assign(f, {
        speed: x.speed, heading: x.heading, routeId: x.routeId, tripId: x.tripId,
        passengerCount: x.passengerCount, time: r.time, ts: r.ts_ns,
      });
      if (typeof x.latitude === "number" && typeof x.longitude === "number") this._move(f, x.latitude, x.longitude);
    } else if (layer === "links") {
      f.lanes.set(lane, {
        averageVehicleSpeed: x.averageVehicleSpeed, intensity: x.intensity,
        occupancy: x.occupancy, time: r.time, ts: r.ts_ns,
      });
      this._laneLevels(f);
      this._linkLevel(f);
    } else if (layer === "parking") {
      f.free = x.availableSpotNumber;
      f.total = x.totalSpotNumber;
      f.occupancy = typeof x.occupancy === "number" ? x.occupancy
        : (f.total ? Math.min(1, Math.max(0, 1 - f.free / f.total)) : null);
      f.time = r.time;
      f.ts = r.ts_ns;
    } else if (layer === "air") {
      f.fields = x;
      f.time = r.time;
      f.ts = r.ts_ns;
      [f.band, f.per] = this.aqi(x);
    }
    this.dirty.add(key);
    return "map";
  }

  _feature(layer, key, gateway, device) {
    let f = this.layers[layer].get(key);
    if (!f) {
      f = { key, layer, gateway, device };
      if (layer === "links") f.lanes = new Map();
      if (layer === "vehicles") f.trail = [];
      this.layers[layer].set(key, f);
      this.geometryChanged = true;
    }
    return f;
  }

  _move(f, lat, lon) {
    if (f.lat === lat && f.lon === lon) return;
    f.lat = lat;
    f.lon = lon;
    f.trail.push([lat, lon]);
    if (f.trail.length > TRAIL) f.trail.shift();
  }

  _freeFlow(f) {
    const device = this.devices.get(f.key);
    const announced = device && Number(device.meta && device.meta.freeFlowSpeed);
    return f.freeFlowSpeed || (announced > 0 ? announced : DEFAULT_FREE_FLOW);
  }

  /** Each lane's level, as the API computes it per row of /v1/transport/links. */
  _laneLevels(f) {
    const free = this._freeFlow(f);
    for (const lane of f.lanes.values()) [lane.level] = congestion(lane.averageVehicleSpeed, free);
  }

  _linkLevel(f) {
    const free = this._freeFlow(f);
    const speeds = [...f.lanes.values()].map((l) => l.averageVehicleSpeed).filter((s) => typeof s === "number");
    f.speed = speeds.length ? speeds.reduce((a, b) => a + b, 0) / speeds.length : null;
    f.time = [...f.lanes.values()].map((l) => l.time).sort().at(-1);
    [f.level, f.ratio] = congestion(f.speed, free);
    f.free = free;
  }

  /** Everything a search or the keyboard cursor can land on, in a stable order. */
  features() {
    const out = [];
    for (const layer of ["vehicles", "parking", "air", "links"]) {
      for (const key of [...this.layers[layer].keys()].sort()) out.push({ layer, key });
    }
    return out;
  }

  /** Which layer holds a device (for selection from alerts or search). */
  layerOf(key) {
    for (const layer of LAYERS) if (this.layers[layer].has(key)) return layer;
    return null;
  }
}

function isFull(f) {
  return typeof f.occupancy === "number" && f.occupancy >= 0.95;
}
