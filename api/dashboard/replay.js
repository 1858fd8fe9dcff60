// Replaying the last hours on the map: the stored alert transitions (GET /v1/alerts/history)
// say which alerts were active at any moment, and the city's recorded readings (GET
// /v1/transport/replay, one-minute steps) where each vehicle was and how congested each
// traffic link was. A slider picks the moment; the map draws alerts, vehicles and links as
// they were. Car parks and air stations keep showing live readings.

import { keyOf } from "./model.js";
import { fmtDateTime } from "./util.js";

/** A vehicle's last position is carried forward this many steps (minutes) when it sent none. */
const CARRY_STEPS = 3;

const $ = (sel) => document.querySelector(sel);
export const REPLAY_HOURS = 6;

export class AlertReplay {
  /** @param {{api, map, onStop: Function}} deps  onStop: give the markers back to the live panel */
  constructor({ api, map, onStop }) {
    this.api = api;
    this.map = map;
    this.onStop = onStop;
    this.on = false;
    this.episodes = [];
    this.frames = null;
    this.toggle = $("#replay-toggle");
    this.slider = $("#replay-slider");
    this.status = $("#replay-status");
    this.toggle.addEventListener("change", () => (this.toggle.checked ? this.start() : this.stop()));
    this.slider.addEventListener("input", () => this.show());
  }

  async start() {
    this.on = true;
    document.body.dataset.replay = "loading";
    this.status.textContent = "Loading the last hours…";
    const end = Date.now();
    const start = end - REPLAY_HOURS * 3600 * 1000;
    const byId = new Map();
    // The city's recorded positions and link speeds, fetched beside the alert history.
    const frames = this.api.get("/v1/transport/replay", {
      start: new Date(start).toISOString(), end: new Date(end).toISOString(), step: "60s",
    });
    try {
      let offset = 0;
      while (offset !== null && offset !== undefined && offset < 20000) {
        const page = await this.api.get("/v1/alerts/history", {
          start: new Date(start).toISOString(), end: new Date(end).toISOString(), offset, limit: 1000,
        });
        for (const e of page.items) {
          let a = byId.get(e.alert_id);
          if (!a) {
            a = { id: e.alert_id, rule: e.rule, severity: e.severity, gateway: e.gateway, device: e.device, from: start, to: Infinity, ackAt: Infinity };
            byId.set(e.alert_id, a);
          }
          const at = Date.parse(e.at);
          if (e.transition === "raised") a.from = at;
          else if (e.transition === "resolved") a.to = at;
          else if (e.transition === "acknowledged") a.ackAt = at;
        }
        offset = page.next_offset;
      }
      this.frames = await frames;
    } catch (exc) {
      frames.catch(() => {});
      this.status.textContent = `Could not load the last hours: ${exc.message}`;
      this.toggle.checked = false;
      this.stop();
      return;
    }
    if (!this.on) return;
    this.episodes = [...byId.values()];
    this.start_ = start;
    this.slider.disabled = false;
    this.slider.value = this.slider.max;
    document.body.dataset.replay = "on";
    this.show();
  }

  /** The alerts active at the slider's moment, drawn on the map. */
  show() {
    if (!this.on || !this.start_) return;
    const t = this.start_ + Number(this.slider.value) * 60 * 1000;
    const active = this.episodes.filter((a) => a.from <= t && a.to > t)
      .map((a) => ({ ...a, acknowledged: a.ackAt <= t }));
    this.map.renderAlerts(active);
    const moved = this.drawCity(t);
    const when = new Date(t).toISOString();
    this.slider.setAttribute("aria-valuetext", fmtDateTime(when));
    this.status.dataset.active = String(active.length);
    this.status.textContent = `${fmtDateTime(when)}: ${active.length} alert${active.length === 1 ? "" : "s"} active, ${moved} vehicle${moved === 1 ? "" : "s"} on the road (replay)`;
  }

  /** Vehicles and links at moment `t` (ms) from the recorded steps; returns the number of
   * vehicles with a position then. */
  drawCity(t) {
    const f = this.frames;
    if (!f || !f.times.length) {
      this.map.setReplay({ vehicles: new Map(), links: new Map() });
      return 0;
    }
    const i = Math.min(f.times.length - 1, Math.floor((t - Date.parse(f.times[0])) / (f.step_s * 1000)));
    const vehicles = new Map();
    for (const v of f.vehicles) {
      let pos = null;
      for (let j = i; j >= 0 && j >= i - CARRY_STEPS && !pos; j -= 1) pos = v.positions[j];
      vehicles.set(keyOf(v.gateway, v.device), i >= 0 ? pos : null);
    }
    const links = new Map();
    for (const l of f.links) links.set(keyOf(l.gateway, l.device), i >= 0 ? l.congestionLevel[i] : "unknown");
    this.map.setReplay({ vehicles, links });
    this.status.dataset.vehicles = String([...vehicles.values()].filter(Boolean).length);
    return Number(this.status.dataset.vehicles);
  }

  stop() {
    this.on = false;
    this.episodes = [];
    this.frames = null;
    this.map.setReplay(null);
    delete this.status.dataset.vehicles;
    this.start_ = null;
    this.slider.disabled = true;
    this.status.textContent = "";
    delete this.status.dataset.active;
    document.body.dataset.replay = "off";
    this.onStop();
  }
}
