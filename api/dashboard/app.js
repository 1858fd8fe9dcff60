// Entry point: sign-in, loading snapshots over REST, the live stream, and wiring the panels.
//
// The API key lives in sessionStorage only (this tab, until it closes): never in
// localStorage, cookies or the page URL. A key handed over in the URL fragment
// (#key=..., which browsers never send to a server) is moved to sessionStorage and
// removed from the address bar before anything else runs.

import { Api, ApiError } from "./api.js";
import { CityModel } from "./model.js";
import { CityMap } from "./map.js";
import { attachBaseMap } from "./basemap.js";
import { LiveStream } from "./live.js";
import { AlertsPanel, DetailsPanel, GatewaysPanel } from "./panels.js";
import { AuditPanel } from "./audit.js";
import { FleetPanel } from "./fleet.js";
import { Notifier } from "./notify.js";
import { AlertReplay } from "./replay.js";
import { ago, el, fmtDuration, setTimeZone } from "./util.js";

const STORAGE_KEY = "smartcity.apiKey";
const BASE_TITLE = document.title;
const MESSAGE_KEY = "smartcity.signInMessage";
const $ = (sel) => document.querySelector(sel);

function takeKeyFromFragment() {
  const match = /^#key=([A-Za-z0-9_.~-]{8,256})$/.exec(window.location.hash);
  if (window.location.hash) {
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
  return match ? decodeURIComponent(match[1]) : null;
}

class Dashboard {
  constructor() {
    this.model = null;
    this.live = null;
    this.timers = [];
    this.renderPending = false;
    this.alertsDirty = false;
    this.gatewaysDirty = false;
    this.resyncTimer = null;
  }

  // -- session --------------------------------------------------------------------------
  async boot() {
    const handed = takeKeyFromFragment();
    if (handed) sessionStorage.setItem(STORAGE_KEY, handed);
    $("#signin-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.signIn($("#key").value.trim());
    });
    $("#signout").addEventListener("click", () => this.signOut("Signed out."));
    window.addEventListener("hashchange", () => {
      const key = takeKeyFromFragment();
      if (key && key !== sessionStorage.getItem(STORAGE_KEY)) {
        sessionStorage.setItem(STORAGE_KEY, key);
        window.location.reload();
      }
    });
    const key = sessionStorage.getItem(STORAGE_KEY);
    const message = sessionStorage.getItem(MESSAGE_KEY) || "";
    sessionStorage.removeItem(MESSAGE_KEY);
    if (key) await this.signIn(key, true);
    else this.showSignIn(message);
  }

  showSignIn(message = "") {
    document.body.dataset.session = "signed-out";
    $("#app").hidden = true;
    $("#signout").hidden = true;
    $("#signin").hidden = false;
    $("#signin-error").textContent = message;
    $("#key").value = "";
    $("#key").focus();
  }

  async signIn(key, restoring = false) {
    if (!key) {
      $("#signin-error").textContent = "Enter an API key.";
      return;
    }
    const api = new Api(key);
    try {
      // Who the key is (its role decides what the page offers), the vocabulary, the map's
      // base-map source: all three answer only to a valid key.
      [this.me, this.vocabulary, this.config] = await Promise.all([
        api.get("/v1/me"), api.get("/v1/vocabulary"), api.get("/v1/dashboard/config"),
      ]);
    } catch (exc) {
      sessionStorage.removeItem(STORAGE_KEY);
      const why = exc instanceof ApiError && exc.status === 401 ? "That key was not accepted."
        : exc instanceof ApiError && exc.status === 429 ? "Too many attempts; wait a moment."
          : `Cannot reach the API (${exc.message}).`;
      this.showSignIn(restoring ? `Your session ended: ${why}` : why);
      return;
    }
    sessionStorage.setItem(STORAGE_KEY, key);
    $("#key").value = "";
    api.onUnauthorized = () => this.signOut("The key is no longer accepted; sign in again.");
    this.start(api);
  }

  signOut(message) {
    // Forget the key, then start over from a fresh page: nothing the key unlocked stays in
    // memory or in the DOM. Only the (secret-free) message survives the reload.
    sessionStorage.removeItem(STORAGE_KEY);
    if (this.live) this.live.stop();
    sessionStorage.setItem(MESSAGE_KEY, message);
    window.location.reload();
  }

  // -- running ----------------------------------------------------------------------------
  start(api) {
    this.api = api;
    this.model = new CityModel();
    this.model.setVocabulary(this.vocabulary);
    if (this.config.stale_after_s) this.model.staleAfterS = this.config.stale_after_s;
    setTimeZone(this.config.timezone);
    document.body.dataset.timezone = this.config.timezone || "";
    document.body.dataset.session = "signed-in";
    $("#signin").hidden = true;
    $("#app").hidden = false;
    $("#signout").hidden = false;
    const who = $("#who");
    who.textContent = `${this.me.name} (${this.me.role})`;
    who.hidden = false;
    document.body.dataset.role = this.me.role;
    const select = (key) => this.select(key);
    const selectGateway = (id) => this.selectGateway(id);
    this.map = new CityMap($("#map"), this.model, {
      onSelect: select,
      onSelectGateway: selectGateway,
      onCursor: (text) => { $("#map-status").textContent = `${text}. Enter shows details.`; },
    });
    this.details = new DetailsPanel($("#details"), { api, model: this.model, onSelectDevice: select });
    this.details.clear();
    this.alerts = new AlertsPanel($("#alerts"), {
      api, model: this.model, onSelectDevice: (key) => this.show(key), onSelectGateway: selectGateway,
      canAck: Boolean(this.me.can && this.me.can.acknowledge_alerts),
      // The map's alert markers follow the panel's severity and state filters.
      onShown: (alerts) => { if (!this.replay || !this.replay.on) this.map.renderAlerts(alerts); },
    });
    if (this.config.tiles) {
      attachBaseMap(this.map, this.config.tiles).then((base) => {
        this.basemap = base;
        $("#basemap-toggle").hidden = false;
      }, (exc) => {
        // The drawing works without it; say why the base map is missing.
        $("#map").dataset.tiles = "unavailable";
        $("#load-error").textContent = `Base map not loaded: ${exc.message}`;
      });
    }
    this.gateways = new GatewaysPanel($("#gateways"), { api, model: this.model, onSelectGateway: selectGateway });
    // The fleet view (versions, clocks, disks): fed by the gateway loads below; filtered by
    // the API.
    this.fleet = new FleetPanel($("#fleet"), { api, onSelectGateway: selectGateway });
    // The audit trail, for admin keys only (the API refuses it to the others).
    if (this.me.can && this.me.can.read_audit) {
      $("#audit").hidden = false;
      this.audit = new AuditPanel($("#audit"), { api });
      this.audit.refresh();
    }
    this.notifier = new Notifier();
    this.replay = new AlertReplay({ api, map: this.map, onStop: () => this.alerts.render() });
    this._bindToolbar();
    this._bindKpis();
    this.live = new LiveStream(() => sessionStorage.getItem(STORAGE_KEY), {
      onEvent: (e) => this.onEvent(e),
      onStatus: (s, delay) => this.onStatus(s, delay),
      onResync: (why) => this.resync(why),
      onAuthFailed: () => this.checkKey(),
    });
    // One snapshot at start: the stream connects first and its greeting asks for the
    // snapshot (events from then on are applied on top, so nothing falls between the two).
    // Should the stream not connect within 3 s (a proxy refusing WebSockets), load it anyway.
    this.snapshots = 0;
    this.live.start();
    this.fallback = setTimeout(() => { if (!this.snapshots) this.resync("start"); }, 3000);
    // Inventory and completeness change slowly: poll them; readings and alerts come live.
    this.timers.push(setInterval(() => this.refreshInventory(), 15000));
    this.timers.push(setInterval(() => this.refreshAdherence(), 15000));
    this.timers.push(setInterval(() => this.refreshAlerts(), 30000));
    if (this.audit) this.timers.push(setInterval(() => { if (!this.audit.loading && !this.audit.next) this.audit.refresh(); }, 30000));
    this.timers.push(setInterval(() => this.tick(), 1000));
    // Time passes: what was live becomes stale without any event.
    this.timers.push(setInterval(() => { this.map.refreshStale(); this._renderKpis(); }, 5000));
  }

  async resync(why) {
    clearTimeout(this.resyncTimer);
    if (why === "dropped") {
      // Many drops in a burst: one REST resync is enough.
      this.resyncTimer = setTimeout(() => this.resync("dropped-now"), 1000);
      return;
    }
    const api = this.api;
    if (!api) return;
    if (why === "connected" && this.loadingSnapshot) return; // the one under way will do
    this.snapshots += 1;
    this.loadingSnapshot = true;
    try {
      const [devices, gateways, vehicles, links, parking, air, alerts] = await Promise.all([
        api.getAll("/v1/devices"), api.getAll("/v1/gateways"),
        api.getAll("/v1/transport/vehicles"), api.getAll("/v1/transport/links"),
        api.getAll("/v1/transport/parking"), api.getAll("/v1/resources/air"),
        api.get("/v1/alerts"),
      ]);
      if (api !== this.api) return;
      const m = this.model;
      m.setDevices(devices);
      m.setGateways(gateways);
      this.fleet.update(gateways);
      m.setVehicles(vehicles);
      m.setLinks(links);
      m.setParking(parking);
      m.setAir(air);
      m.setAlerts(alerts.items);
      this.alertsDirty = this.gatewaysDirty = true;
      this.scheduleRender();
      $("#load-error").textContent = "";
      this.loadingSnapshot = false;
      if (!this.loaded) this.refreshAdherence();
      this.loaded = true;
    } catch (exc) {
      this.loadingSnapshot = false;
      if (exc instanceof ApiError && exc.status === 401) return;
      $("#load-error").textContent = `Could not load the city: ${exc.message}. Retrying.`;
      this.resyncTimer = setTimeout(() => this.resync("retry"), 5000);
    }
  }

  async refreshInventory() {
    if (!this.api) return;
    try {
      const [devices, gateways] = await Promise.all([this.api.getAll("/v1/devices"), this.api.getAll("/v1/gateways")]);
      this.model.setDevices(devices);
      this.model.setGateways(gateways);
      this.fleet.update(gateways);
      this.gatewaysDirty = true;
      this.scheduleRender();
    } catch {
      // shown by the connection state; the next poll retries
    }
  }

  /** Late and bunched buses from the API's schedule adherence; without a timetable (404)
   * their KPIs stay hidden. Polled: adherence changes at the pace of buses between stops. */
  async refreshAdherence() {
    if (!this.api || this.noTimetable || !this.config.timetable) return;
    try {
      const page = await this.api.get("/v1/transport/adherence", { limit: 1000 });
      this.model.setAdherence(page);
      for (const name of ["late", "bunched"]) $(`[data-kpi="${name}"]`).hidden = false;
      this._renderKpis();
    } catch (exc) {
      if (exc instanceof ApiError && exc.status === 404) this.noTimetable = true;
    }
  }

  async refreshAlerts() {
    if (!this.api) return;
    try {
      this.model.setAlerts((await this.api.get("/v1/alerts")).items);
      this.alertsDirty = true;
      this.scheduleRender();
    } catch {
      // next poll retries
    }
  }

  async checkKey() {
    if (!this.api) return;
    try {
      await this.api.get("/v1/me");
    } catch {
      // a 401 signs out through onUnauthorized; anything else: the stream keeps retrying
    }
  }

  onEvent(event) {
    if (event.type === "alert" && event.state === "raised" && event.alert.severity === "critical") {
      this.notifier.critical(event.alert);
    }
    const what = this.model.apply(event);
    if (what === "alerts") this.alertsDirty = true;
    if (what === "gateways") this.gatewaysDirty = true;
    if (what) this.scheduleRender();
  }

  onStatus(state, delay) {
    const pill = $("#conn");
    pill.dataset.state = state;
    document.body.dataset.live = state;
    pill.textContent = state === "live" ? "Live"
      : state === "reconnecting" ? `Reconnecting in ${Math.max(1, Math.round(delay))} s`
        : state === "connecting" ? "Connecting…" : "Not connected";
  }

  scheduleRender() {
    if (this.renderPending) return;
    this.renderPending = true;
    // At most four redraws a second, whatever the event rate.
    setTimeout(() => requestAnimationFrame(() => {
      this.renderPending = false;
      if (!this.model) return;
      this.map.render();
      this._renderKpis();
      if (this.alertsDirty) {
        this.alerts.render();
        this._updateTitle();
      }
      if (this.gatewaysDirty) this.gateways.render();
      this.alertsDirty = this.gatewaysDirty = false;
      this._updateSearch();
    }), 250);
  }

  tick() {
    const m = this.model;
    if (!m) return;
    $("#last-event").textContent = m.lastEventAt ? `last update ${ago(new Date(m.lastEventAt).toISOString())}` : "";
  }

  // -- title, KPIs ---------------------------------------------------------------------------
  /** "(3) City operations": unresolved critical alerts not yet acknowledged. */
  _updateTitle() {
    const n = [...this.model.alerts.values()].filter((a) => a.severity === "critical" && !a.acknowledged).length;
    document.title = `${n ? `(${n}) ` : ""}${BASE_TITLE}`;
    document.body.dataset.critical = String(n);
  }

  _renderKpis() {
    if (!this.model || !this.snapshotsDone()) return;
    const k = this.model.kpis();
    const set = (id, n) => { $(`#kpi-${id}`).textContent = String(n); $(`[data-kpi="${id}"]`).dataset.count = String(n); };
    set("severe", k.levels.severe);
    set("heavy", k.levels.heavy);
    set("parking-full", k.parkingFull);
    set("air-poor", k.airPoor);
    set("offline", k.offline);
    if (this.model.adherence) {
      set("late", this.model.adherence.late);
      set("bunched", this.model.adherence.bunched);
    }
    $("#kpi-offline-for").textContent = k.offline ? `(longest ${fmtDuration(k.longestOfflineS)})` : "";
    const strip = $("#kpis");
    if (strip.dataset.ready !== "true") {
      strip.dataset.ready = "true";
      // Time from navigation to a filled strip, for the tests and the curious.
      strip.dataset.filledMs = String(Math.round(performance.now()));
    }
  }

  snapshotsDone() {
    return Boolean(this.loaded);
  }

  _bindKpis() {
    for (const button of document.querySelectorAll("#kpis .kpi")) {
      button.addEventListener("click", () => {
        const name = button.dataset.kpi;
        const on = button.getAttribute("aria-pressed") !== "true";
        for (const b of document.querySelectorAll("#kpis .kpi")) b.setAttribute("aria-pressed", String(on && b === button));
        this.map.setFilter(on ? { name, match: (layer, key) => this.model.kpiMatch(name, layer, key) } : null);
        const label = button.querySelector(".kpi-label").textContent;
        $("#map-status").textContent = on ? `Map shows only ${label}.` : "Map shows everything.";
      });
    }
  }

  // -- selection ----------------------------------------------------------------------------
  async select(key) {
    if (!key) {
      this.map.select(null);
      this.details.clear();
      return;
    }
    this.map.select(key);
    this.map.centreOn(key);
    await this.details.showDevice(key);
  }

  /** From an alert or the search box: also pan and zoom the map to it. */
  async show(key) {
    this.map.select(key);
    this.map.zoomTo(key);
    await this.details.showDevice(key);
  }

  async selectGateway(id) {
    this.map.select(null);
    await this.details.showGateway(id);
  }

  _bindToolbar() {
    for (const box of document.querySelectorAll("#layers input[type=checkbox]")) {
      box.onchange = () => (box.value === "basemap"
        ? this.basemap && this.basemap.setVisible(box.checked)
        : this.map.setLayerVisible(box.value, box.checked));
    }
    $("#zoom-in").onclick = () => this.map.zoom(1 / 1.5);
    $("#zoom-out").onclick = () => this.map.zoom(1.5);
    $("#zoom-reset").onclick = () => this.map.reset();
    const search = $("#search");
    search.onchange = () => this._search(search.value);
    search.onkeydown = (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        this._search(search.value);
      }
    };
  }

  /** Exact ids first (a device id, "gateway/device", a gateway id), then the first id that
   * contains the text. Every device of the inventory is found, on the map or not. */
  _search(text) {
    const q = text.trim().toLowerCase();
    const result = $("#search-result");
    if (!q) {
      result.textContent = "";
      return;
    }
    const keys = [...this.model.devices.keys()].sort();
    const device = (k) => k.slice(k.indexOf("/") + 1).toLowerCase();
    const gateways = [...this.model.gateways.keys()].sort();
    const exactKey = keys.find((k) => k.toLowerCase() === q) || keys.find((k) => device(k) === q);
    const exactGateway = gateways.find((g) => g.toLowerCase() === q);
    let found = null;
    if (exactKey) found = ["device", exactKey];
    else if (exactGateway) found = ["gateway", exactGateway];
    else {
      const partKey = keys.find((k) => device(k).includes(q));
      const partGateway = gateways.find((g) => g.toLowerCase().includes(q));
      if (partKey) found = ["device", partKey];
      else if (partGateway) found = ["gateway", partGateway];
    }
    if (!found) {
      result.textContent = `No device or gateway matches “${text.trim()}”.`;
      result.dataset.state = "none";
      $("#map-status").textContent = result.textContent;
      return;
    }
    const [kind, id] = found;
    result.dataset.state = "found";
    if (kind === "gateway") {
      result.textContent = `Gateway ${id}`;
      this.selectGateway(id);
      return;
    }
    const layer = this.model.layerOf(id);
    result.textContent = layer ? `Found ${this.map.describe(layer, id)}` : `Found ${id} (not drawn on the map)`;
    $("#map-status").textContent = `${result.textContent}.`;
    this.show(id);
  }

  _updateSearch() {
    const list = $("#search-options");
    const size = this.model.devices.size + this.model.gateways.size;
    if (list.dataset.size === String(size)) return;
    list.dataset.size = String(size);
    while (list.firstChild) list.firstChild.remove();
    for (const key of this.model.devices.keys()) list.append(el("option", { value: key.slice(key.indexOf("/") + 1) }));
    for (const id of this.model.gateways.keys()) list.append(el("option", { value: id }));
  }
}

// Global shortcuts (not while typing in a field).
document.addEventListener("keydown", (e) => {
  const t = e.target;
  if (e.altKey || e.ctrlKey || e.metaKey) return;
  if (t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement) return;
  if (document.body.dataset.session !== "signed-in") return;
  const go = { "/": "#search", m: "#map", a: "#alerts-title", g: "#gateways-title", d: "#details-title" }[e.key];
  if (go) {
    e.preventDefault();
    $(go).focus();
  } else if (e.key === "?") {
    const help = $("#help");
    help.open = !help.open;
  }
});

export const dashboard = new Dashboard();
window.addEventListener("DOMContentLoaded", () => dashboard.boot());
// For tests and console debugging (same page, so it exposes nothing sessionStorage does not).
window.smartcityDashboard = dashboard;
