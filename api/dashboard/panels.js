// Side panels: details of the selection (with its history chart), active alerts, gateways.

import { el, svg, clear, ago, fmtDateTime, fmtDuration, fieldValue, humanText, pct, fmtNumber } from "./util.js";
import { HistoryChart, RANGES } from "./chart.js";
import { PRIMARY_FIELD, keyOf } from "./model.js";
import { AQI_COLOURS, CONGESTION_COLOURS } from "./map.js";
import { ApiError } from "./api.js";

const KIND_TITLE = { vehicles: "Vehicle", parking: "Car park", air: "Air-quality station", links: "Traffic link" };
const SEVERITY_ORDER = { critical: 0, warning: 1, info: 2 };

function badge(text, colour, cls = "") {
  const b = el("span", { class: `badge ${cls}` }, text);
  if (colour) {
    const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = colour;
    b.prepend(swatch);
  }
  return b;
}

function dl(rows) {
  const list = el("dl", { class: "facts" });
  for (const [term, value] of rows) {
    if (value === null || value === undefined) continue;
    list.append(el("dt", {}, term), el("dd", {}, value));
  }
  return list;
}

// -- details ------------------------------------------------------------------------------

export class DetailsPanel {
  constructor(root, { api, model, onSelectDevice }) {
    this.root = root;
    this.api = api;
    this.model = model;
    this.onSelectDevice = onSelectDevice;
    this.title = root.querySelector("#details-title");
    this.body = root.querySelector("#details-body");
    this.controls = root.querySelector("#chart-controls");
    this.summary = root.querySelector("#chart-summary");
    this.chart = new HistoryChart(root.querySelector("#chart"));
    this.key = null;
    this.range = RANGES[1];
    this.field = null;
    this.timer = null;
    this.seq = 0;
  }

  clear() {
    this.key = null;
    this.gateway = null;
    clearInterval(this.timer);
    this.title.textContent = "Details";
    clear(this.body);
    this.body.append(el("p", { class: "muted" }, "Select a vehicle, road, car park or air-quality station on the map, an alert, or a gateway."));
    clear(this.controls);
    this.summary.textContent = "";
    this.chart.destroy();
    this.root.dataset.empty = "true";
    delete this.root.dataset.selected;
  }

  async showDevice(key) {
    const [gateway, device] = splitKey(key);
    this.key = key;
    this.gateway = null;
    this.field = null;
    clearInterval(this.timer);
    this.title.textContent = `${KIND_TITLE[this.model.layerOf(key)] || "Device"} ${device}`;
    this.root.dataset.empty = "false";
    await this._refreshDevice(true);
    this.timer = setInterval(() => this._refreshDevice(false), 5000);
    this.root.dataset.selected = key;
    return { gateway, device };
  }

  async _refreshDevice(first) {
    const key = this.key;
    if (!key) return;
    const [gateway, device] = splitKey(key);
    const seq = ++this.seq;
    let info = this.model.devices.get(key) || null;
    let latest = [];
    try {
      const [dev, live] = await Promise.all([
        this.api.get(`/v1/devices/${encodeURIComponent(gateway)}/${encodeURIComponent(device)}`).catch((e) => (e instanceof ApiError && e.status === 404 ? null : Promise.reject(e))),
        this.api.get(`/v1/live/${encodeURIComponent(gateway)}/${encodeURIComponent(device)}`).catch((e) => (e instanceof ApiError && e.status === 404 ? { readings: [] } : Promise.reject(e))),
      ]);
      info = dev || info;
      latest = live.readings;
    } catch (exc) {
      if (first) this._error(exc);
      return;
    }
    if (seq !== this.seq || key !== this.key) return;
    this.latest = latest;
    this.info = info;
    this._renderDevice(info, latest);
    if (first) {
      this._renderControls(latest);
      this.sparks = new Map();
      this._loadSparks(key, latest);
      await this.loadHistory();
    }
  }

  _renderDevice(info, latest) {
    const layer = this.model.layerOf(this.key);
    const f = layer ? this.model.layers[layer].get(this.key) : null;
    const [gateway] = splitKey(this.key);
    clear(this.body);
    const status = [];
    const stale = layer ? this.model.staleness(layer, this.key) : null;
    const known = stale ? " (last known)" : "";
    if (layer === "air" && f && f.band) status.push(badge(`Air quality: ${f.band}${known}`, AQI_COLOURS[f.band]));
    if (layer === "links" && f) status.push(badge(`Traffic: ${f.level}${known}`, CONGESTION_COLOURS[f.level]));
    if (layer === "parking" && f) status.push(badge(`${f.free ?? "?"} of ${f.total ?? "?"} free${known}`, null));
    if (stale) status.push(badge(`not live: ${stale.why}`, null, "bad stale-badge"));
    else if (info) status.push(badge(info.online ? "online" : "offline", null, info.online ? "ok" : "bad"));
    if (status.length) this.body.append(el("p", { class: "badges" }, ...status));
    // A vehicle is where its latest GPS reading puts it, not where its birth said it started.
    const vehicle = layer === "vehicles";
    const live = vehicle ? this.model.position("vehicles", this.key) : null;
    const loc = live ? { lat: live[0], lon: live[1] } : info && info.location;
    // Its area is the API's (placed by its position in the city's area map, `areas_path`),
    // or, with no map, that of the nearest fixed device.
    const area = vehicle && live ? (f && f.area) || this.model.areaNear(live[0], live[1]) : (info && info.area) || (f && f.area) || null;
    this.body.append(dl([
      ["Gateway", el("button", { type: "button", class: "link", onclick: () => this.showGateway(gateway) }, gateway)],
      ["Kind", info ? info.kind : null],
      ["Area", area],
      ["Position", loc ? el("span", { "data-field": "position" }, `${loc.lat.toFixed(5)}, ${loc.lon.toFixed(5)}${live ? " (live GPS)" : ""}`) : null],
      ["Last reading", info && info.last_reading ? el("time", { datetime: info.last_reading, title: fmtDateTime(info.last_reading) }, `${ago(info.last_reading)}`) : "none yet"],
    ]));
    for (const r of latest) {
      const table = el("table", { class: "fields" },
        el("caption", {}, `${r.measurement}${r.tags && r.tags.lane ? `, lane ${r.tags.lane}` : ""}`),
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Field"), el("th", { scope: "col" }, "Value"), el("th", { scope: "col" }, "Unit"))));
      table.querySelector("thead tr").append(el("th", { scope: "col" }, "Last hour"));
      const tbody = el("tbody");
      for (const [name, value] of Object.entries(r.fields)) {
        const [text, unit] = fieldValue(name, value, this.model.rawUnit(r.measurement, name, info));
        tbody.append(el("tr", {}, el("th", { scope: "row" }, name),
          el("td", { class: "num" }, text), el("td", {}, unit),
          el("td", { class: "spark-cell" }, this._spark(`${r.measurement}.${name}`, name, unit))));
      }
      table.append(tbody);
      this.body.append(table);
    }
    if (!latest.length) this.body.append(el("p", { class: "muted" }, "No readings yet."));
  }

  /** The last hour of each numeric field (30 s means), for the sparklines. */
  async _loadSparks(key, latest) {
    const [gateway, device] = splitKey(key);
    const wanted = [];
    for (const r of latest) {
      for (const [field, value] of Object.entries(r.fields)) {
        if (typeof value === "number" && wanted.length < 8) wanted.push([r.measurement, field, Date.parse(r.time)]);
      }
    }
    await Promise.all(wanted.map(async ([measurement, field, t]) => {
      const endMs = (Number.isFinite(t) ? t : Date.now()) + 1000;
      try {
        const out = await this.api.get("/v1/history", {
          gateway, device, measurement, field, window: "30s", aggregate: "mean",
          start: new Date(endMs - 3600 * 1000).toISOString(), end: new Date(endMs).toISOString(),
        });
        if (key === this.key) this.sparks.set(`${measurement}.${field}`, out.points.map((p) => p.value).filter((v) => typeof v === "number"));
      } catch {
        // no sparkline for that field; the chart below says why if it is the charted one
      }
    }));
    if (key === this.key && this.latest) this._renderDevice(this.info, this.latest);
  }

  _spark(id, name, unit) {
    const values = this.sparks && this.sparks.get(id);
    if (!values || !values.length) return "";
    const [w, h] = [80, 20];
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    const span = hi - lo || 1;
    const step = values.length > 1 ? w / (values.length - 1) : 0;
    const points = values.map((v, i) => `${(values.length > 1 ? i * step : w).toFixed(1)},${(h - 2 - ((v - lo) / span) * (h - 4)).toFixed(1)}`).join(" ");
    const [loText] = fieldValue(name, lo, unit === "%" ? "1" : unit);
    const [hiText] = fieldValue(name, hi, unit === "%" ? "1" : unit);
    const line = svg("svg", { class: "spark", width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": `${name}, last hour: ${loText} to ${hiText}${unit ? ` ${unit}` : ""}` });
    // One point so far (a device just started): a dot at the right end.
    line.append(values.length > 1 ? svg("polyline", { points, class: "spark-line" })
      : svg("circle", { cx: w - 2, cy: h / 2, r: 2, class: "spark-dot" }));
    return line;
  }

  _renderControls(latest) {
    clear(this.controls);
    const options = [];
    const seen = new Set();
    for (const r of latest) {
      for (const [name, value] of Object.entries(r.fields)) {
        const id = `${r.measurement}.${name}`;
        if (typeof value !== "number" || seen.has(id)) continue;
        seen.add(id);
        options.push({ measurement: r.measurement, field: name, time: r.time });
      }
    }
    if (!options.length) {
      this.chart.message("Nothing to chart yet.");
      return;
    }
    const primary = options.find((o) => PRIMARY_FIELD[o.measurement] === o.field) || options[0];
    this.field = primary;
    const select = el("select", { id: "chart-field", "aria-label": "Field to chart" });
    for (const o of options) {
      const opt = el("option", { value: `${o.measurement}.${o.field}` }, `${o.field} (${o.measurement})`);
      if (o === primary) opt.selected = true;
      select.append(opt);
    }
    select.addEventListener("change", () => {
      this.field = options.find((o) => `${o.measurement}.${o.field}` === select.value);
      this.loadHistory();
    });
    const group = el("div", { class: "segmented", role: "group", "aria-label": "Time range" });
    for (const r of RANGES) {
      const b = el("button", { type: "button", "data-range": r.id, "aria-pressed": String(r === this.range) }, r.label);
      b.addEventListener("click", () => {
        this.range = r;
        for (const other of group.querySelectorAll("button")) other.setAttribute("aria-pressed", String(other === b));
        this.loadHistory();
      });
      group.append(b);
    }
    const csv = el("button", { type: "button", id: "chart-csv", class: "small-button" }, "CSV");
    csv.addEventListener("click", () => {
      if (!this.points) return;
      const [gw, dev] = splitKey(this.key);
      const { measurement, field } = this.field;
      downloadCsv(`${dev}-${field}-${this.range.id}.csv`, [["time", "gateway", "device", "measurement", "field", `mean (${this.range.window})`],
        ...this.points.map((p) => [p.time, gw, dev, measurement, field, p.value])]);
    });
    this.controls.append(el("label", { for: "chart-field" }, "Chart"), select, group, csv);
  }

  async loadHistory() {
    if (!this.key || !this.field) return;
    const [gateway, device] = splitKey(this.key);
    const { measurement, field } = this.field;
    // The range ends at the device's latest reading: simulated clocks may run ahead or behind.
    const latest = (this.latest || []).filter((r) => r.measurement === measurement).map((r) => Date.parse(r.time)).filter(Number.isFinite);
    const endMs = (latest.length ? Math.max(...latest) : Date.now()) + 1000;
    const startMs = endMs - this.range.seconds * 1000;
    const key = this.key;
    this.summary.textContent = "Loading history…";
    try {
      const out = await this.api.get("/v1/history", {
        gateway, device, measurement, field,
        start: new Date(startMs).toISOString(), end: new Date(endMs).toISOString(),
        window: this.range.window, aggregate: "mean",
      });
      if (key !== this.key) return;
      this.points = out.points;
      const unit = fieldValue(field, 0.5, [out.unit, this.model.rawUnit(measurement, field, this.model.devices.get(key))]
        .find((u) => u && u !== "-") || "")[1];
      this.summary.textContent = `${this.range.label} as ${this.range.window} means. ` + this.chart.draw(out.points, { label: field, unit, start: startMs / 1000, end: endMs / 1000 });
    } catch (exc) {
      if (key !== this.key) return;
      this.chart.message(`History unavailable: ${exc.message}`);
      this.summary.textContent = "";
    }
  }

  async showGateway(id) {
    this.key = null;
    this.gateway = id;
    clearInterval(this.timer);
    this.chart.destroy();
    clear(this.controls);
    this.summary.textContent = "";
    this.title.textContent = `Gateway ${id}`;
    this.root.dataset.empty = "false";
    let gw;
    try {
      gw = await this.api.get(`/v1/gateways/${encodeURIComponent(id)}`);
    } catch (exc) {
      this._error(exc);
      return;
    }
    if (this.gateway !== id) return;
    clear(this.body);
    const spool = gw.health && gw.health.spool;
    const c = gw.completeness;
    const offlineFor = gw.online ? null : `${fmtDuration((Date.now() - Date.parse(gw.since)) / 1000)}`;
    this.body.append(
      el("p", { class: "badges" }, badge(gw.online ? gw.state : `${gw.state} for ${offlineFor}`, null, gw.online ? "ok" : "bad")),
      dl([
        [gw.online ? "Since" : "Offline since", fmtDateTime(gw.since)],
        ["Last seen", gw.last_seen ? ago(gw.last_seen) : "never"],
        ["Agent", gw.agent],
        ["Reason", gw.reason],
        ["Area", gw.location && gw.location.area],
        ["Spool backlog", spool ? `${spool.batches} batches, ${fmtNumber(spool.bytes / 1024, 1)} KiB` : "no health report yet"],
        ["Completeness", !gw.online ? `not measured while offline${c ? ` (last: ${pct(c.ratio)} over ${c.window})` : ""}`
          : c ? `${pct(c.ratio)} (${c.received} of ${c.expected} batches, ${c.window})` : "not measured yet"],
      ]),
    );
    const list = el("ul", { class: "device-list" });
    for (const d of gw.device_list) {
      list.append(el("li", {}, el("button", { type: "button", class: "link", onclick: () => this.onSelectDevice(keyOf(id, d.id)) }, d.id), ` ${d.kind}${d.online ? "" : " (offline)"}`));
    }
    this.body.append(el("h3", {}, `Devices (${gw.device_list.length})`), list);
  }

  _error(exc) {
    clear(this.body);
    this.body.append(el("p", { class: "error", role: "alert" }, `Could not load: ${exc.message}`));
  }
}

function splitKey(key) {
  const i = key.indexOf("/");
  return [key.slice(0, i), key.slice(i + 1)];
}

// -- alerts -------------------------------------------------------------------------------

const READ_ONLY = "This key may only read: acknowledging alerts needs an operator key.";
const HISTORY_PAGE = 50;
const GROUP_OPEN_TOTAL = 30; // up to this many alerts, every group is open
const GROUP_OPEN_MAX = 20; // beyond, critical groups up to this size stay open

/** Active alerts in the order an operator works them: unresolved critical alerts pinned on
 * top (acknowledged or not: a gateway still offline stays in sight), then not-acknowledged
 * before acknowledged, then by severity, newest first. */
export function alertOrder(a, b) {
  const pin = (x) => (x.severity === "critical" ? 0 : 1);
  return (pin(a) - pin(b)) || (a.acknowledged - b.acknowledged)
    || (SEVERITY_ORDER[a.severity] - SEVERITY_ORDER[b.severity]) || (b.started_ns - a.started_ns);
}

export class AlertsPanel {
  /** `canAck`: the key's role may acknowledge (from /v1/me); a 403 still turns it off. */
  constructor(root, { api, model, onSelectDevice, onSelectGateway, canAck, onShown = () => {} }) {
    this.root = root;
    this.onShown = onShown; // called with the alerts the filters let through (map markers)
    this.api = api;
    this.model = model;
    this.onSelectDevice = onSelectDevice;
    this.onSelectGateway = onSelectGateway;
    this.list = root.querySelector("#alert-list");
    this.count = root.querySelector("#alert-count");
    this.note = root.querySelector("#alert-note");
    this.canAck = canAck;
    if (!canAck) this.note.textContent = READ_ONLY;
    this.open = null; // id of the alert (or "group:<key>") whose ack form is open
    this.expanded = new Set(); // group keys the operator opened
    this.collapsed = new Set(); // group keys the operator closed
    this.severity = root.querySelector("#alert-severity");
    this.state = root.querySelector("#alert-state");
    this.groupBy = root.querySelector("#alert-group");
    for (const select of [this.severity, this.state, this.groupBy]) select.addEventListener("change", () => this.render());
    this.history = root.querySelector("#alert-history");
    this.historyList = root.querySelector("#alert-history-list");
    this.historyStatus = root.querySelector("#alert-history-status");
    this.historyPager = root.querySelector("#history-pager");
    this.historyOffset = 0;
    this.historyFilters = ["#history-range", "#history-transition", "#history-severity"].map((q) => root.querySelector(q));
    for (const select of this.historyFilters) {
      select.addEventListener("change", () => { this.historyOffset = 0; this.loadHistory(); });
    }
    root.querySelector("#history-csv").addEventListener("click", () => this.exportHistory());
    // Opened just after an alert event (an acknowledgement, say), the stored history may not
    // hold it yet (the API writes it about once a second): look again shortly after.
    this.history.addEventListener("toggle", () => {
      if (!this.history.open) return;
      this.loadHistory();
      setTimeout(() => this.loadHistory(), 1500);
    });
  }

  _historyParams() {
    const [range, transition, severity] = this.historyFilters.map((s) => s.value);
    const end = new Date();
    return {
      start: new Date(end.getTime() - Number(range) * 1000).toISOString(), end: end.toISOString(),
      transition, severity,
    };
  }

  /** Stored transitions (GET /v1/alerts/history) over a range, filtered, a page at a time. */
  async loadHistory() {
    if (!this.history.open || this.loadingHistory) return;
    this.loadingHistory = true;
    try {
      const page = await this.api.get("/v1/alerts/history", { ...this._historyParams(), offset: this.historyOffset, limit: HISTORY_PAGE });
      clear(this.historyList);
      for (const e of page.items) {
        const subject = e.device ? `${e.gateway}/${e.device}` : e.gateway;
        const who = e.transition === "acknowledged" ? ` by ${e.by || "?"}${e.note ? `: “${e.note}”` : ""}` : "";
        this.historyList.append(el("li", { class: `history-item ${e.transition}`, "data-alert-id": e.alert_id },
          el("time", { datetime: e.at, title: ago(e.at) }, fmtDateTime(e.at)), " ",
          el("span", { class: `transition ${e.transition}` }, e.transition), " ",
          el("strong", {}, humanText(e.rule)), ` · ${subject}${who}`));
      }
      const last = Math.min(page.total, this.historyOffset + page.items.length);
      this.historyStatus.textContent = page.total
        ? `${page.total} transition${page.total === 1 ? "" : "s"}; ${page.items.length ? `${this.historyOffset + 1}–${last}` : "none"} shown, newest first.`
        : "Nothing matches in this range.";
      this.root.querySelector("#alert-history").dataset.total = String(page.total);
      clear(this.historyPager);
      if (page.total > HISTORY_PAGE) {
        this.historyPager.append(
          el("button", { type: "button", disabled: this.historyOffset === 0, onclick: () => { this.historyOffset = Math.max(0, this.historyOffset - HISTORY_PAGE); this.loadHistory(); } }, "Newer"),
          el("button", { type: "button", disabled: page.next_offset === null, onclick: () => { this.historyOffset = page.next_offset; this.loadHistory(); } }, "Older"));
      }
    } catch (exc) {
      this.historyStatus.textContent = `Could not load the history: ${exc.message}`;
    } finally {
      this.loadingHistory = false;
    }
  }

  async exportHistory() {
    const rows = [["at", "transition", "severity", "rule", "gateway", "device", "area", "message", "value", "by", "note"]];
    let offset = 0;
    try {
      while (offset !== null && rows.length < 20001) {
        const page = await this.api.get("/v1/alerts/history", { ...this._historyParams(), offset, limit: 1000 });
        for (const e of page.items) rows.push([e.at, e.transition, e.severity, e.rule, e.gateway, e.device, e.area, e.message, e.value, e.by, e.note]);
        offset = page.next_offset;
      }
    } catch (exc) {
      this.historyStatus.textContent = `Could not export: ${exc.message}`;
      return;
    }
    downloadCsv("alert-history.csv", rows);
  }

  _visible() {
    const sev = this.severity.value;
    const state = this.state.value;
    return [...this.model.alerts.values()].filter((a) => (!sev || a.severity === sev)
      && (!state || (state === "acked") === Boolean(a.acknowledged))).sort(alertOrder);
  }

  _groups(alerts) {
    const mode = this.groupBy.value;
    if (mode === "none") return [{ key: "all", title: null, items: alerts }];
    const groups = new Map();
    for (const a of alerts) {
      const key = mode === "rule" ? `${a.rule_id}` : `${a.rule_id}|${a.area || ""}`;
      if (!groups.has(key)) {
        const area = mode === "rule" ? null : (a.area || "no area");
        groups.set(key, { key, title: humanText(a.rule), area, items: [] });
      }
      groups.get(key).items.push(a);
    }
    // Groups keep the order of their first (most urgent) alert.
    return [...groups.values()];
  }

  render() {
    const all = [...this.model.alerts.values()];
    const active = all.filter((a) => !a.acknowledged).length;
    this.count.textContent = all.length ? `${active} new, ${all.length} active` : "none";
    this.root.dataset.count = String(all.length);
    const focused = document.activeElement && this.list.contains(document.activeElement) ? document.activeElement.dataset.focusId : null;
    clear(this.list);
    // The stored history lags the live push by about a second (the API writes it in batches).
    if (this.history.open) setTimeout(() => this.loadHistory(), 1500);
    const alerts = this._visible();
    this.onShown(alerts);
    if (!alerts.length) {
      this.list.append(el("li", { class: "muted" }, all.length ? "No active alert matches the filters." : "No active alerts."));
      return;
    }
    const groups = this._groups(alerts);
    if (groups.length === 1 && groups[0].title === null) {
      for (const a of alerts) this.list.append(this._item(a));
    } else {
      for (const g of groups) this.list.append(this._group(g, alerts.length));
    }
    if (focused) this.list.querySelector(`[data-focus-id="${CSS.escape(focused)}"]`)?.focus();
  }

  _group(g, total) {
    const worst = g.items[0];
    const unacked = g.items.filter((a) => !a.acknowledged);
    // A short list shows everything; a long one opens only small critical groups.
    const open = this.collapsed.has(g.key) ? false
      : this.expanded.has(g.key) || total <= GROUP_OPEN_TOTAL
        || (worst.severity === "critical" && g.items.length <= GROUP_OPEN_MAX);
    const li = el("li", { class: `alert-group sev-${worst.severity}`, "data-group": g.key });
    const details = el("details", { class: "group" });
    details.open = open;
    details.addEventListener("toggle", () => {
      if (details.open) { this.expanded.add(g.key); this.collapsed.delete(g.key); } else { this.collapsed.add(g.key); this.expanded.delete(g.key); }
    });
    const summary = el("summary", { class: "group-head" },
      el("span", { class: `sev sev-${worst.severity}` }, worst.severity), " ",
      el("strong", {}, g.title), g.area ? ` · ${g.area}` : "",
      el("span", { class: "group-count" }, ` ${g.items.length} (${unacked.length} new)`));
    details.append(summary);
    if (this.canAck && unacked.length) {
      const formKey = `group:${g.key}`;
      if (this.open === formKey) {
        const input = el("input", { type: "text", maxlength: 1024, "aria-label": `Note for the ${unacked.length} alerts of ${g.title}`, placeholder: "Note (optional)", "data-focus-id": `note-${formKey}` });
        const form = el("form", { class: "ack-form" }, input,
          el("button", { type: "submit" }, `Acknowledge ${unacked.length}`),
          el("button", { type: "button", onclick: () => { this.open = null; this.render(); } }, "Cancel"));
        form.addEventListener("submit", (e) => {
          e.preventDefault();
          this.acknowledgeMany(unacked.map((a) => a.id), input.value);
        });
        details.append(form);
        queueMicrotask(() => input.focus());
      } else {
        details.append(el("button", { type: "button", class: "ack ack-all", "data-focus-id": `ack-${formKey}`, onclick: () => { this.open = formKey; this.render(); } }, `Acknowledge all ${unacked.length}`));
      }
    }
    const inner = el("ul", { class: "alert-list-inner" });
    if (open) for (const a of g.items) inner.append(this._item(a));
    details.append(inner);
    li.append(details);
    return li;
  }

  _item(a) {
    const subject = a.device ? `${a.gateway}/${a.device}` : a.gateway;
    const li = el("li", { class: `alert sev-${a.severity}${a.acknowledged ? " acked" : ""}`, "data-alert-id": a.id });
    const head = el("div", { class: "alert-head" },
      el("span", { class: `sev sev-${a.severity}` }, a.severity),
      el("strong", {}, humanText(a.rule)));
    const target = el("button", {
      type: "button", class: "link", "data-focus-id": `show-${a.id}`,
      onclick: () => (a.device ? this.onSelectDevice(keyOf(a.gateway, a.device)) : this.onSelectGateway(a.gateway)),
    }, subject);
    li.append(head, el("p", {}, humanText(a.message)), el("p", { class: "meta" }, target, " · started ",
      el("time", { datetime: a.started, title: ago(a.started) }, fmtDateTime(a.started)),
      a.area ? ` · ${a.area}` : ""));
    if (a.acknowledged) {
      li.append(el("p", { class: "meta ack" }, `Acknowledged by ${a.ack_by || "?"} ${a.ack_at ? ago(a.ack_at) : ""}${a.ack_note ? `: “${a.ack_note}”` : ""}`));
    } else if (this.canAck) {
      if (this.open === a.id) {
        const input = el("input", { type: "text", maxlength: 1024, "aria-label": `Note for ${a.rule} on ${subject}`, placeholder: "Note (optional)", "data-focus-id": `note-${a.id}` });
        const form = el("form", { class: "ack-form" }, input,
          el("button", { type: "submit", "data-focus-id": `confirm-${a.id}` }, "Confirm"),
          el("button", { type: "button", onclick: () => { this.open = null; this.render(); } }, "Cancel"));
        form.addEventListener("submit", (e) => {
          e.preventDefault();
          this.acknowledge(a.id, input.value);
        });
        li.append(form);
        queueMicrotask(() => input.focus());
      } else {
        li.append(el("button", { type: "button", class: "ack", "data-focus-id": `ack-${a.id}`, onclick: () => { this.open = a.id; this.render(); } }, "Acknowledge"));
      }
    }
    return li;
  }

  _refused(exc) {
    if (exc instanceof ApiError && exc.status === 403) {
      this.canAck = false;
      this.note.textContent = READ_ONLY;
    } else {
      this.note.textContent = `Could not acknowledge: ${exc.message}`;
    }
  }

  async acknowledge(id, note) {
    try {
      const alert = await this.api.post(`/v1/alerts/${encodeURIComponent(id)}/ack`, { note });
      this.model.alerts.set(alert.id, alert);
      this.open = null;
      this.note.textContent = "Alert acknowledged.";
    } catch (exc) {
      this._refused(exc);
    }
    this.render();
  }

  /** Acknowledge a group with one note (POST /v1/alerts/ack, up to 1000 at a time). */
  async acknowledgeMany(ids, note) {
    let done = 0;
    try {
      for (let i = 0; i < ids.length; i += 1000) {
        const out = await this.api.post("/v1/alerts/ack", { ids: ids.slice(i, i + 1000), note });
        for (const a of out.acknowledged) this.model.alerts.set(a.id, a);
        for (const id of out.missing) this.model.alerts.delete(id);
        done += out.acknowledged.length;
      }
      this.open = null;
      this.note.textContent = `${done} alert${done === 1 ? "" : "s"} acknowledged.`;
    } catch (exc) {
      this._refused(exc);
    }
    this.render();
  }
}

/** Offer rows as a CSV file (RFC 4180 quoting) for download. */
export function downloadCsv(name, rows) {
  const cell = (v) => {
    const t = v === null || v === undefined ? "" : String(v);
    return /[",\r\n]/.test(t) ? `"${t.replace(/"/g, '""')}"` : t;
  };
  const text = rows.map((r) => r.map(cell).join(",")).join("\r\n") + "\r\n";
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
  const a = el("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// -- gateways -----------------------------------------------------------------------------

const PAGE = 10;

export class GatewaysPanel {
  constructor(root, { api, model, onSelectGateway }) {
    this.root = root;
    this.api = api;
    this.model = model;
    this.onSelectGateway = onSelectGateway;
    this.summary = root.querySelector("#gateway-summary");
    this.body = root.querySelector("#gateway-rows");
    this.filter = root.querySelector("#gateway-filter");
    this.pager = root.querySelector("#gateway-pager");
    this.page = 0;
    this.filter.addEventListener("change", () => { this.page = 0; this.render(); });
    root.querySelector("#gateways-csv").addEventListener("click", () => this.exportCsv());
  }

  exportCsv() {
    const rows = [["gateway", "state", "online", "since", "last_seen", "spool_batches", "completeness"]];
    for (const g of this._rows()) {
      rows.push([g.id, g.state, g.online, g.since, g.last_seen, g.spool ? g.spool.batches : "", g.completeness ? g.completeness.ratio : ""]);
    }
    downloadCsv("gateways.csv", rows);
  }

  _rows() {
    const all = [...this.model.gateways.values()];
    // A backlog older than a minute: the uplink is down or slower than the sensors.
    const backlog = (g) => g.spool && g.spool.batches > 0 && (g.spool.oldest_age_s ?? 0) > 60;
    const problem = (g) => !g.online || (g.completeness && g.completeness.ratio < 0.99) || backlog(g);
    const mode = this.filter.value;
    const rows = all.filter((g) => mode === "all" || (mode === "offline" ? !g.online : problem(g)));
    const rank = (g) => (!g.online ? 0 : problem(g) ? 1 : 2);
    return rows.sort((a, b) => rank(a) - rank(b) || ((a.completeness?.ratio ?? 1) - (b.completeness?.ratio ?? 1)) || a.id.localeCompare(b.id));
  }

  render() {
    const all = [...this.model.gateways.values()];
    const online = all.filter((g) => g.online).length;
    this.summary.textContent = `${online} online, ${all.length - online} offline or silent, ${all.length} in all`;
    const rows = this._rows();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    this.page = Math.min(this.page, pages - 1);
    const visible = rows.slice(this.page * PAGE, this.page * PAGE + PAGE);
    clear(this.body);
    for (const g of visible) {
      const spool = g.spool;
      const c = g.completeness;
      const tr = el("tr", { "data-gateway": g.id, class: g.online ? "" : "offline" },
        el("th", { scope: "row" }, el("button", { type: "button", class: "link", onclick: () => this.onSelectGateway(g.id) }, g.id)),
        el("td", {}, el("span", { class: `state ${g.online ? "ok" : "bad"}` }, g.online ? "online" : g.state === "offline" ? "offline" : "silent"),
          // Offline (or silent) since when: how long, the moment on hover.
          g.online ? null : el("span", { class: "offline-since" }, " for ",
            el("time", { datetime: g.since, title: `since ${fmtDateTime(g.since)}` }, fmtDuration((Date.now() - Date.parse(g.since)) / 1000)))),
        el("td", {}, g.last_seen ? el("time", { datetime: g.last_seen, title: fmtDateTime(g.last_seen) }, ago(g.last_seen)) : "never"),
        el("td", { class: "num", title: spool ? spoolTitle(spool) : "no health report yet" }, spool ? `${spool.batches}` : "–"),
        // Offline: nothing arrives, so the last window's ratio says nothing about now.
        g.online
          ? el("td", { class: `num${c && c.ratio < 0.99 ? " warn" : ""}` }, c ? pct(c.ratio) : "–")
          : el("td", { class: "num muted", title: c ? `last measured ${pct(c.ratio)} over ${c.window}` : "not measured" }, "offline"));
      this.body.append(tr);
    }
    if (!visible.length) this.body.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No gateways match.")));
    clear(this.pager);
    if (pages > 1) {
      this.pager.append(
        el("button", { type: "button", disabled: this.page === 0, onclick: () => { this.page -= 1; this.render(); } }, "Previous"),
        el("span", { "aria-live": "polite" }, ` Page ${this.page + 1} of ${pages} `),
        el("button", { type: "button", disabled: this.page >= pages - 1, onclick: () => { this.page += 1; this.render(); } }, "Next"));
    }
  }
}

function spoolTitle(spool) {
  const age = spool.oldest_age_s === null ? "" : `, oldest ${fmtNumber(spool.oldest_age_s, 0)} s`;
  return `${spool.batches} batches (${spool.readings} readings, ${fmtNumber(spool.bytes / 1024, 1)} KiB${age}) waiting in the gateway's spool, as reported ${ago(spool.reported_at)}`;
}
