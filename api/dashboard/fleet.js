// The fleet panel: per gateway its agent version, last update, clock offset, enrolment,
// disk free and link states, filtered by the API's flags (GET /v1/gateways?status=...).
// Unfiltered, it shows the dashboard's own gateway list (the snapshot and the 15 s inventory
// poll: no request of its own); a filter asks the API, on change and at each poll.

import { el, clear, ago, fmtDateTime, fmtNumber } from "./util.js";

const FLAG_TEXT = { outdated: "outdated", clock_off: "clock off", disk_low: "disk low" };

export class FleetPanel {
  constructor(root, { api, onSelectGateway }) {
    this.root = root;
    this.api = api;
    this.onSelectGateway = onSelectGateway;
    this.body = root.querySelector("#fleet-rows");
    this.filter = root.querySelector("#fleet-filter");
    this.status = root.querySelector("#fleet-status");
    this.loading = null;
    this.all = null;
    this.filter.addEventListener("change", () => this.refresh());
  }

  /** The unfiltered list, from the dashboard's own /v1/gateways loads. */
  update(items) {
    this.all = items;
    if (!this.filter.value) this.render(items, items.length);
    else if (!this.loading) this.refresh();
  }

  async refresh() {
    const status = this.filter.value;
    if (!status) {
      if (this.all) this.render(this.all, this.all.length);
      return;
    }
    const run = (this.loading = this._load(status));
    try {
      await run;
    } finally {
      if (this.loading === run) this.loading = null;
    }
  }

  async _load(status) {
    let page;
    try {
      page = await this.api.get("/v1/gateways", { status: status || null, limit: 1000 });
    } catch (exc) {
      this.status.textContent = `Fleet not loaded: ${exc.message}`;
      return;
    }
    if (status !== this.filter.value) return; // the filter changed meanwhile
    this.render(page.items || [], page.total ?? (page.items || []).length);
  }

  render(items, total) {
    const flagged = items.filter((g) => (g.flags || []).length).length;
    this.status.textContent = this.filter.value
      ? `${total} gateway${total === 1 ? "" : "s"} ${FLAG_TEXT[this.filter.value]}`
      : `${total} gateways, ${flagged} with a problem`;
    this.root.dataset.ready = "true";
    clear(this.body);
    for (const g of items) {
      const flags = new Set(g.flags || []);
      this.body.append(el("tr", { "data-gateway": g.id, "data-flags": [...flags].join(" ") },
        el("th", { scope: "row" }, el("button", { type: "button", class: "link", onclick: () => this.onSelectGateway(g.id) }, g.id)),
        el("td", { class: `version${flags.has("outdated") ? " warn" : ""}` }, g.version || "–",
          flags.has("outdated") ? el("span", { class: "flag" }, " outdated") : null),
        updateCell(g.last_update),
        clockCell(g.clock),
        el("td", { class: `enrolment ${g.enrolment || "none"}` }, g.enrolment || "–"),
        el("td", { class: `num disk${flags.has("disk_low") ? " warn" : ""}` }, bytes(g.disk_free_bytes),
          flags.has("disk_low") ? el("span", { class: "flag" }, " low") : null),
        linksCell(g.links || {})));
    }
    if (!items.length) this.body.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No gateways match.")));
  }
}

function updateCell(u) {
  if (!u) return el("td", { class: "update muted" }, "–");
  const bad = u.status && !["ok", "pending"].includes(u.status);
  return el("td", { class: `update${bad ? " warn" : ""}`, title: u.reason || "" },
    `${u.status || "?"} ${u.version || ""}`.trim(),
    u.at ? el("span", { class: "muted" }, " ", el("time", { datetime: u.at, title: fmtDateTime(u.at) }, ago(u.at))) : null);
}

function clockCell(c) {
  if (!c) return el("td", { class: "clock muted", title: "not checked (sync-time-check)" }, "–");
  const sign = c.offset_s >= 0 ? "+" : "−";
  const err = c.delay_s === null || c.delay_s === undefined ? "" : ` ± ${fmtNumber(c.delay_s / 2, 3)} s`;
  return el("td", { class: `num clock${c.off ? " warn" : ""}`, title: `checked ${fmtDateTime(c.checked_at)}${err}` },
    `${sign}${fmtNumber(Math.abs(c.offset_s), 2)} s`, c.off ? el("span", { class: "flag" }, " off") : null);
}

function linksCell(links) {
  const names = Object.keys(links).sort();
  if (!names.length) return el("td", { class: "links muted" }, "–");
  return el("td", { class: "links" }, ...names.map((n) =>
    el("span", { class: `link-state ${links[n] === "up" ? "ok" : "bad"}`, title: `${n}: ${links[n]}` }, `${n} ${links[n]} `)));
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${fmtNumber(n, i ? 1 : 0)} ${units[i]}`;
}
