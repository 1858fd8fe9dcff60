// Replaying the last hours of alerts on the map: the stored transitions (GET
// /v1/alerts/history) say which alerts were active at any moment; a slider picks the moment
// and the map's alert markers show them. Live readings keep drawing the rest of the map.

import { fmtDateTime } from "./util.js";

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
    this.toggle = $("#replay-toggle");
    this.slider = $("#replay-slider");
    this.status = $("#replay-status");
    this.toggle.addEventListener("change", () => (this.toggle.checked ? this.start() : this.stop()));
    this.slider.addEventListener("input", () => this.show());
  }

  async start() {
    this.on = true;
    document.body.dataset.replay = "loading";
    this.status.textContent = "Loading the alert history…";
    const end = Date.now();
    const start = end - REPLAY_HOURS * 3600 * 1000;
    const byId = new Map();
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
    } catch (exc) {
      this.status.textContent = `Could not load the alert history: ${exc.message}`;
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
    const when = new Date(t).toISOString();
    this.slider.setAttribute("aria-valuetext", fmtDateTime(when));
    this.status.dataset.active = String(active.length);
    this.status.textContent = `${fmtDateTime(when)}: ${active.length} alert${active.length === 1 ? "" : "s"} active (replay)`;
  }

  stop() {
    this.on = false;
    this.episodes = [];
    this.start_ = null;
    this.slider.disabled = true;
    this.status.textContent = "";
    delete this.status.dataset.active;
    document.body.dataset.replay = "off";
    this.onStop();
  }
}
