// Side panels: details of the selection (with its history chart), active alerts, gateways.

import { el, clear, ago, fmtDateTime, fmtNumber, pct } from "./util.js";
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
  }

  async showDevice(key) {
    const [gateway, device] = splitKey(key);
    this.key = key;
    this.gateway = null;
    this.field = null;
    clearInterval(this.timer);
    this.title.textContent = `${KIND_TITLE[this.model.layerOf(key)] || "Device"} ${device}`;
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
    this._renderDevice(info, latest);
    if (first) {
      this._renderControls(latest);
      await this.loadHistory();
    }
  }

  _renderDevice(info, latest) {
    const layer = this.model.layerOf(this.key);
    const f = layer ? this.model.layers[layer].get(this.key) : null;
    const [gateway] = splitKey(this.key);
    clear(this.body);
    const status = [];
    if (layer === "air" && f && f.band) status.push(badge(`Air quality: ${f.band}`, AQI_COLOURS[f.band]));
    if (layer === "links" && f) status.push(badge(`Traffic: ${f.level}`, CONGESTION_COLOURS[f.level]));
    if (layer === "parking" && f) status.push(badge(`${f.free ?? "?"} of ${f.total ?? "?"} free`, null));
    if (info) status.push(badge(info.online ? "online" : "offline", null, info.online ? "ok" : "bad"));
    if (status.length) this.body.append(el("p", { class: "badges" }, ...status));
    const loc = info && info.location;
    this.body.append(dl([
      ["Gateway", el("button", { type: "button", class: "link", onclick: () => this.showGateway(gateway) }, gateway)],
      ["Kind", info ? info.kind : null],
      ["Area", (info && info.area) || (f && f.area) || null],
      ["Position", loc ? `${loc.lat.toFixed(5)}, ${loc.lon.toFixed(5)}` : null],
      ["Last reading", info && info.last_reading ? el("time", { datetime: info.last_reading, title: fmtDateTime(info.last_reading) }, ago(info.last_reading)) : "none yet"],
    ]));
    for (const r of latest) {
      const table = el("table", { class: "fields" },
        el("caption", {}, `${r.measurement}${r.tags && r.tags.lane ? `, lane ${r.tags.lane}` : ""}`),
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Field"), el("th", { scope: "col" }, "Value"), el("th", { scope: "col" }, "Unit"))));
      const tbody = el("tbody");
      for (const [name, value] of Object.entries(r.fields)) {
        tbody.append(el("tr", {}, el("th", { scope: "row" }, name),
          el("td", { class: "num" }, typeof value === "number" ? fmtNumber(value, 3) : String(value)),
          el("td", {}, this.model.unit(r.measurement, name, info))));
      }
      table.append(tbody);
      this.body.append(table);
    }
    if (!latest.length) this.body.append(el("p", { class: "muted" }, "No readings yet."));
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
    this.controls.append(el("label", { for: "chart-field" }, "Chart"), select, group);
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
      const unit = [out.unit, this.model.unit(measurement, field, this.model.devices.get(key))]
        .find((u) => u && u !== "1" && u !== "-") || "";
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
    this.body.append(
      el("p", { class: "badges" }, badge(gw.state, null, gw.online ? "ok" : "bad")),
      dl([
        ["Since", fmtDateTime(gw.since)],
        ["Last seen", gw.last_seen ? ago(gw.last_seen) : "never"],
        ["Agent", gw.agent],
        ["Reason", gw.reason],
        ["Area", gw.location && gw.location.area],
        ["Spool backlog", spool ? `${spool.batches} batches, ${fmtNumber(spool.bytes / 1024, 1)} KiB` : "no health report yet"],
        ["Completeness", c ? `${pct(c.ratio)} (${c.received} of ${c.expected} batches, ${c.window})` : "not measured yet"],
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

export class AlertsPanel {
  /** `canAck`: the key's role may acknowledge (from /v1/me); a 403 still turns it off. */
  constructor(root, { api, model, onSelectDevice, onSelectGateway, canAck }) {
    this.root = root;
    this.api = api;
    this.model = model;
    this.onSelectDevice = onSelectDevice;
    this.onSelectGateway = onSelectGateway;
    this.list = root.querySelector("#alert-list");
    this.count = root.querySelector("#alert-count");
    this.note = root.querySelector("#alert-note");
    this.canAck = canAck;
    if (!canAck) this.note.textContent = READ_ONLY;
    this.open = null; // id of the alert whose ack form is open
    this.history = root.querySelector("#alert-history");
    this.historyList = root.querySelector("#alert-history-list");
    this.historyStatus = root.querySelector("#alert-history-status");
    // Opened just after an alert event (an acknowledgement, say), the stored history may not
    // hold it yet (the API writes it about once a second): look again shortly after.
    this.history.addEventListener("toggle", () => {
      if (!this.history.open) return;
      this.loadHistory();
      setTimeout(() => this.loadHistory(), 1500);
    });
  }

  /** The last 24 h of transitions (GET /v1/alerts/history), loaded when the list is open. */
  async loadHistory() {
    if (!this.history.open || this.loadingHistory) return;
    this.loadingHistory = true;
    try {
      const page = await this.api.get("/v1/alerts/history", { limit: 50 });
      clear(this.historyList);
      for (const e of page.items) {
        const subject = e.device ? `${e.gateway}/${e.device}` : e.gateway;
        const who = e.transition === "acknowledged" ? ` by ${e.by || "?"}${e.note ? `: “${e.note}”` : ""}` : "";
        this.historyList.append(el("li", { class: `history-item ${e.transition}`, "data-alert-id": e.alert_id },
          el("time", { datetime: e.at, title: fmtDateTime(e.at) }, ago(e.at)), " ",
          el("span", { class: `transition ${e.transition}` }, e.transition), " ",
          el("strong", {}, e.rule), ` · ${subject}${who}`));
      }
      this.historyStatus.textContent = page.total
        ? `${page.total} transition${page.total === 1 ? "" : "s"}${page.total > page.items.length ? `, newest ${page.items.length} shown` : ""}.`
        : "Nothing raised, acknowledged or resolved in the last 24 h.";
    } catch (exc) {
      this.historyStatus.textContent = `Could not load the history: ${exc.message}`;
    } finally {
      this.loadingHistory = false;
    }
  }

  render() {
    const alerts = [...this.model.alerts.values()].sort((a, b) =>
      (a.acknowledged - b.acknowledged) || (SEVERITY_ORDER[a.severity] - SEVERITY_ORDER[b.severity]) || (b.started_ns - a.started_ns));
    const active = alerts.filter((a) => !a.acknowledged).length;
    this.count.textContent = alerts.length ? `${active} new, ${alerts.length} active` : "none";
    this.root.dataset.count = String(alerts.length);
    const focused = document.activeElement && this.list.contains(document.activeElement) ? document.activeElement.dataset.focusId : null;
    clear(this.list);
    // The stored history lags the live push by about a second (the API writes it in batches).
    if (this.history.open) setTimeout(() => this.loadHistory(), 1500);
    if (!alerts.length) {
      this.list.append(el("li", { class: "muted" }, "No active alerts."));
      return;
    }
    for (const a of alerts) this.list.append(this._item(a));
    if (focused) this.list.querySelector(`[data-focus-id="${CSS.escape(focused)}"]`)?.focus();
  }

  _item(a) {
    const subject = a.device ? `${a.gateway}/${a.device}` : a.gateway;
    const li = el("li", { class: `alert sev-${a.severity}${a.acknowledged ? " acked" : ""}`, "data-alert-id": a.id });
    const head = el("div", { class: "alert-head" },
      el("span", { class: `sev sev-${a.severity}` }, a.severity),
      el("strong", {}, a.rule));
    const target = el("button", {
      type: "button", class: "link", "data-focus-id": `show-${a.id}`,
      onclick: () => (a.device ? this.onSelectDevice(keyOf(a.gateway, a.device)) : this.onSelectGateway(a.gateway)),
    }, subject);
    li.append(head, el("p", {}, a.message), el("p", { class: "meta" }, target, " · started ",
      el("time", { datetime: a.started, title: fmtDateTime(a.started) }, ago(a.started)),
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

  async acknowledge(id, note) {
    try {
      const alert = await this.api.post(`/v1/alerts/${encodeURIComponent(id)}/ack`, { note });
      this.model.alerts.set(alert.id, alert);
      this.open = null;
      this.note.textContent = "Alert acknowledged.";
    } catch (exc) {
      if (exc instanceof ApiError && exc.status === 403) {
        this.canAck = false;
        this.note.textContent = READ_ONLY;
      } else {
        this.note.textContent = `Could not acknowledge: ${exc.message}`;
      }
    }
    this.render();
  }
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
        el("td", {}, el("span", { class: `state ${g.online ? "ok" : "bad"}` }, g.online ? "online" : g.state === "offline" ? "offline" : "silent")),
        el("td", {}, g.last_seen ? el("time", { datetime: g.last_seen, title: fmtDateTime(g.last_seen) }, ago(g.last_seen)) : "never"),
        el("td", { class: "num", title: spool ? spoolTitle(spool) : "no health report yet" }, spool ? `${spool.batches}` : "–"),
        el("td", { class: `num${c && c.ratio < 0.99 ? " warn" : ""}` }, c ? pct(c.ratio) : "–"));
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
