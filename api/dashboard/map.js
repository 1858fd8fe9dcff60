// The city map in SVG: roads (link geometry), links coloured by congestion, car parks with
// free spaces, air-quality stations coloured by EAQI band, vehicles moving. No tiles needed;
// when the API has a tile source, basemap.js puts a base map under it that follows the view.
//
// Coordinates: an equirectangular projection around the city's centre, in metres-like
// user units (x east, y south). Markers are drawn in screen pixels: each marker group is
// scaled by the current units-per-pixel, so zooming changes positions, not marker sizes.

import { svg, clear, fmtNumber, fmtCount, fmtDuration } from "./util.js";

export const M_PER_DEG = 111320;
const BASE_VIEW_PAD = 0.06;
const LABEL_MAX_PARKING = 60;

export const CONGESTION_COLOURS = {
  free: "#1b7f3b", moderate: "#b26a00", heavy: "#d2461b", severe: "#a0001c", unknown: "#6b6b6b",
};
// The EEA's EAQI colours; markers get a dark outline so the pale ones stay visible.
export const AQI_COLOURS = {
  good: "#50f0e6", fair: "#50ccaa", moderate: "#f0e641", poor: "#ff5050",
  "very poor": "#960032", "extremely poor": "#7d2181",
};

const LAYER_NAMES = ["links", "vehicles", "parking", "air"];
const LAYER_LABEL = { vehicles: "Vehicle", parking: "Car park", air: "Air-quality station", links: "Traffic link" };

export class CityMap {
  /**
   * @param {HTMLElement} host  focusable container (the SVG goes inside)
   * @param {import("./model.js").CityModel} model
   * @param {{onSelect: Function, onCursor: Function}} handlers
   */
  constructor(host, model, handlers) {
    this.host = host;
    this.model = model;
    this.handlers = handlers;
    // SVG-AAM roles: the drawing is a graphics document whose features are named symbols.
    this.svg = svg("svg", { id: "map-svg", role: "graphics-document", "aria-label": "Map of the city", "aria-roledescription": "map" });
    this.svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    this.groups = {};
    // A hatch for stale features (drawn grey and hatched: their data is not live).
    const defs = svg("defs");
    const hatch = svg("pattern", { id: "stale-hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" });
    hatch.append(svg("rect", { width: 6, height: 6, fill: "#d5d8dc" }), svg("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#6b7480", "stroke-width": 2.5 }));
    defs.append(hatch);
    this.svg.append(defs);
    for (const name of ["trails", "roads", "links", "parking", "air", "vehicles", "alerts", "cursor"]) {
      this.groups[name] = svg("g", { id: `layer-${name}`, class: `layer layer-${name}` });
      this.svg.append(this.groups[name]);
    }
    this.host.append(this.svg);
    this.nodes = new Map();       // key -> {g, layer}
    this.sideBySide = new Map();  // key -> marker offset (marker units) for co-located pairs
    this.trails = new Map();      // key -> polyline
    this.origin = null;           // [lat0, lon0, cos(lat0)]
    this.home = null;             // {x, y, w, h} fitted view
    this.view = null;             // current view
    this.userMoved = false;
    this.selected = null;
    this.cursor = -1;
    this.cursorList = [];
    this.hidden = new Set();
    this.filter = null;           // KPI filter: {name, match(layer, key)} or null
    this.alertNodes = new Map();  // subject key -> marker of its worst active alert
    /** Timeline replay: {vehicles: key -> [lat, lon] | null, links: key -> level}, or null
     * (live). While set, vehicles and links are drawn as they were, not from the model. */
    this.replayState = null;
    /** Called with ([lat, lon] of the view's centre, units per pixel, origin latitude). */
    this.onView = null;
    this._bind();
    new ResizeObserver(() => { this._rescale(); this.notifyView(); }).observe(this.host);
  }

  // -- projection -----------------------------------------------------------------------
  project(lat, lon) {
    const [lat0, lon0, k] = this.origin;
    return [(lon - lon0) * k * M_PER_DEG, (lat0 - lat) * M_PER_DEG];
  }

  unproject(x, y) {
    const [lat0, lon0, k] = this.origin;
    return [lat0 - y / M_PER_DEG, lon0 + x / (k * M_PER_DEG)];
  }

  /** Tell `onView` (the base map) what the SVG shows now. */
  notifyView() {
    if (!this.onView || !this.view || !this.origin) return;
    const v = this.view;
    this.onView(this.unproject(v.x + v.w / 2, v.y + v.h / 2), this.unitsPerPx(), this.origin[0]);
  }

  _fit() {
    const pts = [];
    for (const d of this.model.devices.values()) {
      if (d.location) pts.push([d.location.lat, d.location.lon]);
      if (d.geometry) pts.push(...d.geometry);
    }
    for (const layer of ["vehicles", "links", "parking", "air"]) {
      for (const key of this.model.layers[layer].keys()) {
        const p = this.model.position(layer, key);
        if (p) pts.push(p);
      }
    }
    if (!pts.length) return false;
    let [minLat, maxLat, minLon, maxLon] = [90, -90, 180, -180];
    for (const [lat, lon] of pts) {
      minLat = Math.min(minLat, lat); maxLat = Math.max(maxLat, lat);
      minLon = Math.min(minLon, lon); maxLon = Math.max(maxLon, lon);
    }
    const lat0 = (minLat + maxLat) / 2;
    if (!this.origin) this.origin = [lat0, (minLon + maxLon) / 2, Math.cos((lat0 * Math.PI) / 180)];
    const [x0, y1] = this.project(minLat, minLon);
    const [x1, y0] = this.project(maxLat, maxLon);
    const w = Math.max(x1 - x0, 200);
    const h = Math.max(y1 - y0, 200);
    const pad = Math.max(w, h) * BASE_VIEW_PAD;
    this.home = { x: (x0 + x1) / 2 - w / 2 - pad, y: (y0 + y1) / 2 - h / 2 - pad, w: w + 2 * pad, h: h + 2 * pad };
    if (!this.userMoved || !this.view) this.view = { ...this.home };
    return true;
  }

  /** User units per screen pixel. */
  unitsPerPx() {
    const r = this.svg.getBoundingClientRect();
    if (!r.width || !r.height || !this.view) return 1;
    return Math.max(this.view.w / r.width, this.view.h / r.height);
  }

  _applyView() {
    const v = this.view;
    this.svg.setAttribute("viewBox", `${v.x} ${v.y} ${v.w} ${v.h}`);
    this._rescale();
    this.notifyView();
  }

  _rescale() {
    if (!this.view) return;
    const u = this.unitsPerPx();
    // Crowded views (a whole 200-gateway city) get smaller markers; zooming in restores them.
    const total = LAYER_NAMES.reduce((n, l) => n + this.model.layers[l].size, 0);
    const share = Math.min(1, (this.view.w * this.view.h) / (this.home.w * this.home.h));
    const density = Math.min(1, Math.max(0.6, Math.sqrt(300 / Math.max(1, total * share))));
    if (u === this.u && density === this.density) return;
    this.u = u;
    this.density = density;
    this.svg.style.setProperty("--u", String(u));
    this.svg.classList.toggle("labels", this.model.layers.parking.size <= LABEL_MAX_PARKING || u < (this.home.w / 2500));
    this._findColocated();
    for (const [key, node] of this.nodes) this._place(key, node);
    if (this.lastAlerts) this.renderAlerts(this.lastAlerts);
    this._drawCursor();
  }

  // -- drawing --------------------------------------------------------------------------
  render() {
    const m = this.model;
    if (m.geometryChanged) {
      m.geometryChanged = false;
      if (this._fit()) {
        this.u = null; // re-place every marker for the new extent and density
        this._applyView();
        this._drawRoads();
        for (const layer of ["links", "parking", "air", "vehicles"]) {
          for (const key of m.layers[layer].keys()) m.dirty.add(key);
        }
      }
    }
    if (!this.origin) return;
    for (const key of m.dirty) {
      const layer = m.layerOf(key);
      if (layer) this._update(layer, key);
    }
    m.dirty.clear();
    this.host.dataset.vehicles = String(m.layers.vehicles.size);
    this.host.dataset.links = String(m.layers.links.size);
    this.host.dataset.parking = String(m.layers.parking.size);
    this.host.dataset.air = String(m.layers.air.size);
    this.host.dataset.ready = "true";
  }

  /** Car parks and air stations that would overlap on screen at this zoom (a car park and
   * its air station, two car parks of one block) are spread round a small circle, so each keeps its
   * own marker to read and click. Offsets are in marker units (pixels at full density). */
  _findColocated() {
    this.sideBySide.clear();
    // Closer than about one marker on screen at this zoom: they would overlap.
    const near = Math.max(20, 26 * (this.u || 1) * (this.density || 1));
    const pts = [];
    for (const layer of ["parking", "air"]) {
      for (const key of this.model.layers[layer].keys()) {
        const p = this.model.position(layer, key);
        if (p) pts.push({ key, xy: this.project(p[0], p[1]) });
      }
    }
    pts.sort((a, b) => a.xy[0] - b.xy[0] || a.key.localeCompare(b.key));
    const taken = new Set();
    for (let i = 0; i < pts.length; i += 1) {
      if (taken.has(i)) continue;
      const group = [i];
      // Points are sorted by x: only those within `near` along x can be near.
      for (let j = i + 1; j < pts.length && pts[j].xy[0] - pts[i].xy[0] < near; j += 1) {
        if (!taken.has(j) && Math.abs(pts[j].xy[1] - pts[i].xy[1]) < near) group.push(j);
      }
      if (group.length < 2) continue;
      for (const j of group) taken.add(j);
      const n = group.length;
      const r = n === 2 ? 15 : 12 + 5 * n;
      group.forEach((j, k) => {
        const a = (2 * Math.PI * k) / n + Math.PI;
        this.sideBySide.set(pts[j].key, [Math.round(r * Math.cos(a)), Math.round(n === 2 ? 0 : r * Math.sin(a))]);
      });
    }
  }

  _drawRoads() {
    // Links that announce a geometry are drawn as roads; the coloured overlay comes later.
    const g = this.groups.roads;
    clear(g);
    for (const d of this.model.devices.values()) {
      if (!d.geometry) continue;
      g.append(svg("polyline", { points: this._points(d.geometry), class: "road" }));
    }
  }

  _points(coords) {
    return coords.map(([lat, lon]) => this.project(lat, lon).map((v) => v.toFixed(1)).join(",")).join(" ");
  }

  _update(layer, key) {
    const f = this.model.layers[layer].get(key);
    let node = this.nodes.get(key);
    if (!node) {
      node = this._create(layer, key);
      if (!node) return;
      this.nodes.set(key, node);
    }
    if (layer === "links") {
      const level = (this.replayState ? this.replayState.links.get(key) : f.level) || "unknown";
      const colour = CONGESTION_COLOURS[level];
      node.shape.setAttribute("stroke", colour);
      if (node.dot) node.dot.setAttribute("fill", colour);
      node.g.dataset.level = level;
    } else if (layer === "parking") {
      const free = typeof f.free === "number" ? f.free : null;
      node.label.textContent = free === null ? "?" : fmtCount(free);
      const full = f.occupancy !== null && f.occupancy !== undefined && f.occupancy >= 0.95;
      node.g.classList.toggle("full", full);
      node.g.dataset.free = free === null ? "" : String(free);
    } else if (layer === "air") {
      node.shape.setAttribute("fill", AQI_COLOURS[f.band] || "#bdbdbd");
      node.g.dataset.band = f.band || "";
      // The EAQI's own 1 (good) to 6 (extremely poor) scale: no letter to confuse with "P".
      const level = this.model.bands.indexOf(f.band);
      node.label.textContent = level >= 0 ? String(level + 1) : "?";
      node.label.classList.toggle("on-dark", f.band === "very poor" || f.band === "extremely poor" || f.band === "poor");
    } else if (layer === "vehicles") {
      const trail = this.trails.get(key);
      if (trail && f.trail.length > 1) trail.setAttribute("points", this._points(f.trail));
    }
    this._place(key, node);
    const stale = this._markStale(layer, key, node);
    if (this.filter) node.g.classList.toggle("match", this.filter.match(layer, key));
    node.g.setAttribute("aria-label", `${this.describe(layer, key)}${stale ? ` (last known; not live: ${stale.why})` : ""}`);
  }

  /** Grey and hatch a feature whose data is not live; its age shows on hover. */
  _markStale(layer, key, node) {
    const replayed = this.replayState && (layer === "vehicles" || layer === "links");
    const stale = replayed ? null : this.model.staleness(layer, key);
    node.g.classList.toggle("stale", Boolean(stale));
    node.g.dataset.stale = stale ? "true" : "false";
    let title = node.g.querySelector(":scope > title");
    if (!title) {
      title = svg("title");
      node.g.prepend(title);
    }
    title.textContent = stale
      ? `${this.describe(layer, key)}. Not live: ${stale.why}${stale.ageS !== null && stale.ageS !== undefined ? `, last reading ${fmtDuration(stale.ageS)} ago` : ""}`
      : this.describe(layer, key);
    return stale;
  }

  /** Timeline replay: draw vehicles and traffic links as they were (`state`, see
   * `replayState`), or give them back to the live model (null). A vehicle with no position
   * at that moment is hidden; a link with no speed is drawn "unknown". */
  setReplay(state) {
    this.replayState = state;
    this.svg.classList.toggle("replaying", Boolean(state));
    for (const [key, node] of this.nodes) {
      if (node.layer !== "vehicles" && node.layer !== "links") continue;
      if (this.model.layers[node.layer].has(key)) this._update(node.layer, key);
      else if (!state) node.g.classList.remove("replay-absent");
    }
    this.host.dataset.replayVehicles = state ? String([...state.vehicles.values()].filter(Boolean).length) : "";
  }

  /** Re-evaluate staleness of everything (called every few seconds: time passes). */
  refreshStale() {
    for (const [key, node] of this.nodes) this._markStale(node.layer, key, node);
  }

  /** Show only what a KPI counts (null: everything). */
  setFilter(filter) {
    this.filter = filter;
    this.svg.classList.toggle("filtered", Boolean(filter));
    this.host.dataset.filter = filter ? filter.name : "";
    for (const [key, node] of this.nodes) node.g.classList.toggle("match", Boolean(filter && filter.match(node.layer, key)));
  }

  /** A marker at every device or gateway with an active alert (worst severity wins). */
  renderAlerts(alerts) {
    const g = this.groups.alerts;
    this.lastAlerts = alerts;
    if (!this.origin) return;
    const rank = { critical: 0, warning: 1, info: 2 };
    const worst = new Map();
    for (const a of alerts) {
      const key = a.device ? `${a.gateway}/${a.device}` : null;
      const pos = this._alertPosition(a, key);
      if (!pos) continue;
      const id = key || `gw:${a.gateway}`;
      const cur = worst.get(id);
      if (!cur || rank[a.severity] < rank[cur.a.severity]) worst.set(id, { a, pos, key, n: (cur ? cur.n : 0) + 1 });
      else cur.n += 1;
    }
    clear(g);
    this.alertNodes.clear();
    const u = (this.u || this.unitsPerPx()) * (this.density || 1);
    for (const [id, { a, pos, key, n }] of worst) {
      const [x, y] = this.project(pos[0], pos[1]);
      const m = svg("g", {
        class: `alert-marker sev-${a.severity}${a.acknowledged ? " acked" : ""}`, role: "graphics-symbol",
        "data-alert-id": a.id, "data-key": key || "", "data-gateway": a.gateway,
        "aria-label": `${a.severity} alert: ${a.rule} on ${key || a.gateway}${n > 1 ? ` (${n} alerts)` : ""}`,
        transform: `translate(${x.toFixed(2)},${y.toFixed(2)})`,
      });
      const inner = svg("g", { class: "marker", transform: `scale(${u})` });
      inner.append(svg("path", { d: "M10,-22 L20,-4 L0,-4 Z", class: "alert-tri" }), svg("text", { x: 10, y: -7, "text-anchor": "middle", class: "alert-bang", text: "!" }));
      m.append(inner);
      g.append(m);
      this.alertNodes.set(id, m);
    }
  }

  _alertPosition(a, key) {
    if (key) {
      const layer = this.model.layerOf(key);
      const p = layer && this.model.position(layer, key);
      if (p) return p;
      const d = this.model.devices.get(key);
      if (d && d.location) return [d.location.lat, d.location.lon];
      if (d && d.geometry) return d.geometry[Math.floor(d.geometry.length / 2)];
    }
    const gw = this.model.gateways.get(a.gateway);
    return gw && gw.location ? [gw.location.lat, gw.location.lon] : null;
  }

  _create(layer, key) {
    const pos = this.model.position(layer, key);
    const device = this.model.devices.get(key);
    if (!pos && !(layer === "links" && device && device.geometry)) return null;
    const g = svg("g", { class: `feature ${layer}`, role: "graphics-symbol", "data-key": key, "data-layer": layer });
    const node = { g, layer };
    if (layer === "links") {
      if (device && device.geometry) {
        node.shape = svg("polyline", { points: this._points(device.geometry), class: "link-line" });
        node.line = true;
        g.append(node.shape);
        // A wide transparent twin makes a thin line easy to click.
        g.prepend(svg("polyline", { points: this._points(device.geometry), class: "hit" }));
      } else {
        node.marker = svg("g", { class: "marker" });
        node.shape = svg("path", { d: "M-7,0 L7,0", class: "link-tick" });
        node.dot = svg("circle", { r: 4.5, class: "link-dot" });
        node.marker.append(svg("circle", { r: 14, class: "hit-box" }), node.shape, node.dot);
        g.append(node.marker);
      }
    } else if (layer === "parking") {
      node.marker = svg("g", { class: "marker" });
      // A transparent target of at least 24 x 24 px whatever the density (WCAG 2.5.8).
      node.marker.append(svg("rect", { x: -14, y: -14, width: 28, height: 28, class: "hit-box" }));
      node.marker.append(svg("rect", { x: -9, y: -9, width: 18, height: 18, rx: 3, class: "park-box" }));
      node.marker.append(svg("text", { x: 0, y: 4.5, class: "park-p", "text-anchor": "middle", text: "P" }));
      node.label = svg("text", { x: 0, y: 22, class: "park-free", "text-anchor": "middle" });
      node.marker.append(node.label);
      g.append(node.marker);
    } else if (layer === "air") {
      node.marker = svg("g", { class: "marker" });
      node.marker.append(svg("circle", { r: 14, class: "hit-box" }));
      node.shape = svg("circle", { r: 9, class: "air-dot" });
      node.label = svg("text", { x: 0, y: 3.5, class: "air-band", "text-anchor": "middle" });
      node.marker.append(node.shape, node.label);
      g.append(node.marker);
    } else if (layer === "vehicles") {
      node.marker = svg("g", { class: "marker" });
      node.marker.append(svg("circle", { r: 14, class: "hit-box" }));
      node.marker.append(svg("path", { d: "M0,-10 L7,8 L0,4 L-7,8 Z", class: "bus" }));
      g.append(node.marker);
      const trail = svg("polyline", { class: "trail", points: "" });
      this.groups.trails.append(trail);
      this.trails.set(key, trail);
    }
    this.groups[layer].append(g);
    return node;
  }

  _place(key, node) {
    if (node.line || !node.marker) return;
    const replayed = this.replayState && node.layer === "vehicles";
    const pos = replayed ? this.replayState.vehicles.get(key) : this.model.position(node.layer, key);
    node.g.classList.toggle("replay-absent", Boolean(replayed && !pos));
    if (!pos) return;
    const [x, y] = this.project(pos[0], pos[1]);
    const u = (this.u || this.unitsPerPx()) * (this.density || 1);
    node.g.dataset.x = x.toFixed(2);
    node.g.dataset.y = y.toFixed(2);
    if (node.layer === "vehicles") {
      const f = this.model.layers.vehicles.get(key);
      const heading = typeof f.heading === "number" ? f.heading : 0;
      node.g.dataset.lat = String(pos[0]);
      node.g.dataset.lon = String(pos[1]);
      // CSS transform (not the attribute) so the move is animated by a transition.
      node.g.style.transform = `translate(${x}px, ${y}px)`;
      node.marker.style.transform = `scale(${u}) rotate(${heading}deg)`;
    } else {
      node.g.setAttribute("transform", `translate(${x.toFixed(2)},${y.toFixed(2)})`);
      // A car park and an air station at the same spot sit side by side, not on top.
      const [dx, dy] = this.sideBySide.get(key) || [0, 0];
      node.marker.setAttribute("transform", `scale(${u}) translate(${dx},${dy})`);
    }
  }

  describe(layer, key) {
    const f = this.model.layers[layer].get(key);
    const id = f ? f.device : key;
    if (!f) return `${LAYER_LABEL[layer]} ${id}`;
    if (layer === "vehicles") {
      const route = f.routeId ? `, route ${f.routeId}` : "";
      return `Vehicle ${id}${route}, ${fmtNumber(f.speed)} km/h`;
    }
    if (layer === "parking") return `Car park ${id}, ${f.free ?? "unknown"} of ${f.total ?? "?"} spaces free`;
    if (layer === "air") return `Air-quality station ${id}, ${f.band || "no"} air quality`;
    return `Traffic link ${id}, ${f.level || "unknown"} traffic, ${fmtNumber(f.speed)} km/h`;
  }

  // -- visibility, selection and the keyboard cursor -----------------------------------
  setLayerVisible(layer, visible) {
    const names = layer === "vehicles" ? ["vehicles", "trails"] : layer === "links" ? ["links", "roads"] : [layer];
    for (const n of names) this.groups[n].classList.toggle("hidden", !visible);
    if (visible) this.hidden.delete(layer);
    else this.hidden.add(layer);
  }

  select(key) {
    if (this.selected) this.nodes.get(this.selected)?.g.classList.remove("selected");
    this.selected = key;
    const node = key && this.nodes.get(key);
    if (node) {
      node.g.classList.add("selected");
      node.g.parentNode.append(node.g); // on top
    }
  }

  /** Pan and zoom to a feature (selected from an alert or the search box). */
  zoomTo(key) {
    const layer = this.model.layerOf(key);
    const pos = layer && this.model.position(layer, key);
    const d = this.model.devices.get(key);
    const target = pos || (d && d.geometry && d.geometry[Math.floor(d.geometry.length / 2)]) || (d && d.location && [d.location.lat, d.location.lon]);
    if (!target || !this.view || !this.home) return false;
    let [x, y] = this.project(target[0], target[1]);
    // A few hundred metres around a point; a road with its whole length in view.
    let span = Math.max(this.home.w / 5, 600);
    if (d && d.geometry && layer === "links") {
      const xy = d.geometry.map(([lat, lon]) => this.project(lat, lon));
      const xs = xy.map((p) => p[0]);
      const ys = xy.map((p) => p[1]);
      x = (Math.min(...xs) + Math.max(...xs)) / 2;
      y = (Math.min(...ys) + Math.max(...ys)) / 2;
      const aspect = this.view.w / this.view.h;
      span = Math.max(span, 1.6 * (Math.max(...xs) - Math.min(...xs)), 1.6 * (Math.max(...ys) - Math.min(...ys)) * aspect);
    }
    const w = Math.min(this.view.w, span);
    const h = this.view.h * (w / this.view.w);
    this.view = { x: x - w / 2, y: y - h / 2, w, h };
    this.userMoved = true;
    this._applyView();
    return true;
  }

  /** Centre the view on a feature (keeps the zoom unless zoomed out fully). */
  centreOn(key) {
    const layer = this.model.layerOf(key);
    const pos = layer && this.model.position(layer, key);
    const d = this.model.devices.get(key);
    const target = pos || (d && d.geometry && d.geometry[Math.floor(d.geometry.length / 2)]);
    if (!target || !this.view) return;
    const [x, y] = this.project(target[0], target[1]);
    const v = this.view;
    if (x < v.x || x > v.x + v.w || y < v.y || y > v.y + v.h) {
      this.view = { ...v, x: x - v.w / 2, y: y - v.h / 2 };
      this.userMoved = true;
      this._applyView();
    }
  }

  moveCursor(step) {
    this.cursorList = this.model.features().filter((f) => !this.hidden.has(f.layer));
    if (!this.cursorList.length) return;
    const at = this.cursorList.findIndex((f) => f.key === this.cursorKey);
    this.cursor = (at < 0 ? (step > 0 ? -1 : 0) : at) + step;
    this.cursor = (this.cursor + this.cursorList.length) % this.cursorList.length;
    const f = this.cursorList[this.cursor];
    this.cursorKey = f.key;
    this.centreOn(f.key);
    this._drawCursor();
    this.handlers.onCursor(this.describe(f.layer, f.key), f.key);
  }

  _drawCursor() {
    const g = this.groups.cursor;
    clear(g);
    if (!this.cursorKey || !this.origin) return;
    const layer = this.model.layerOf(this.cursorKey);
    let pos = layer && this.model.position(layer, this.cursorKey);
    const d = this.model.devices.get(this.cursorKey);
    if (!pos && d && d.geometry) pos = d.geometry[Math.floor(d.geometry.length / 2)];
    if (!pos) return;
    const [x, y] = this.project(pos[0], pos[1]);
    const ring = svg("circle", { cx: x, cy: y, r: 16 * (this.u || 1), class: "cursor-ring" });
    g.append(ring);
  }

  // -- zoom and pan ----------------------------------------------------------------------
  zoom(factor, cx = null, cy = null) {
    if (!this.view) return;
    const v = this.view;
    const x = cx ?? v.x + v.w / 2;
    const y = cy ?? v.y + v.h / 2;
    const w = Math.min(Math.max(v.w * factor, this.home.w / 40), this.home.w * 4);
    const f = w / v.w;
    this.view = { x: x - (x - v.x) * f, y: y - (y - v.y) * f, w, h: v.h * f };
    this.userMoved = true;
    this._applyView();
  }

  pan(dx, dy) {
    if (!this.view) return;
    this.view = { ...this.view, x: this.view.x + dx * this.view.w, y: this.view.y + dy * this.view.h };
    this.userMoved = true;
    this._applyView();
  }

  reset() {
    if (!this.home) return;
    this.view = { ...this.home };
    this.userMoved = false;
    this._applyView();
  }

  _toUser(clientX, clientY) {
    const p = new DOMPoint(clientX, clientY).matrixTransform(this.svg.getScreenCTM().inverse());
    return [p.x, p.y];
  }

  _bind() {
    this.svg.addEventListener("click", (e) => {
      if (this.dragged) return;
      const g = e.target.closest && e.target.closest("[data-key]");
      if (g && g.dataset.key) this.handlers.onSelect(g.dataset.key);
      else if (g && g.dataset.gateway && this.handlers.onSelectGateway) this.handlers.onSelectGateway(g.dataset.gateway);
    });
    this.svg.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [x, y] = this._toUser(e.clientX, e.clientY);
      this.zoom(e.deltaY > 0 ? 1.2 : 1 / 1.2, x, y);
    }, { passive: false });
    let start = null;
    this.svg.addEventListener("pointerdown", (e) => {
      start = { x: e.clientX, y: e.clientY, view: { ...this.view } };
      this.dragged = false;
    });
    this.svg.addEventListener("pointermove", (e) => {
      if (!start || !this.view) return;
      const dx = e.clientX - start.x;
      const dy = e.clientY - start.y;
      if (!this.dragged && Math.hypot(dx, dy) < 5) return;
      if (!this.dragged) this.svg.setPointerCapture(e.pointerId);
      this.dragged = true;
      const u = this.unitsPerPx();
      this.view = { ...start.view, x: start.view.x - dx * u, y: start.view.y - dy * u };
      this.userMoved = true;
      this._applyView();
    });
    const end = () => {
      start = null;
      setTimeout(() => { this.dragged = false; }, 0);
    };
    this.svg.addEventListener("pointerup", end);
    this.svg.addEventListener("pointercancel", end);
    this.host.addEventListener("keydown", (e) => {
      if (e.altKey || e.ctrlKey || e.metaKey) return;
      const keys = {
        ArrowLeft: () => this.pan(-0.1, 0), ArrowRight: () => this.pan(0.1, 0),
        ArrowUp: () => this.pan(0, -0.1), ArrowDown: () => this.pan(0, 0.1),
        "+": () => this.zoom(1 / 1.5), "=": () => this.zoom(1 / 1.5), "-": () => this.zoom(1.5),
        0: () => this.reset(),
        n: () => this.moveCursor(1), "]": () => this.moveCursor(1),
        p: () => this.moveCursor(-1), "[": () => this.moveCursor(-1),
        Enter: () => this.cursorKey && this.handlers.onSelect(this.cursorKey),
        " ": () => this.cursorKey && this.handlers.onSelect(this.cursorKey),
        Escape: () => this.handlers.onSelect(null),
      };
      const action = keys[e.key];
      if (action) {
        e.preventDefault();
        action();
      }
    });
  }
}
