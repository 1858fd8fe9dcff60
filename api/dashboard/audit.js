// The audit panel (admin keys only): who did what to which gateway, and what came of it, from
// the append-only trail (GET /v1/audit, newest first). Filtered by the API, paged 50 at a
// time, exported as CSV; polled while shown.

import { downloadCsv } from "./panels.js";
import { el, clear, ago, fmtDateTime } from "./util.js";

const PAGE = 50;

export class AuditPanel {
  constructor(root, { api }) {
    this.root = root;
    this.api = api;
    this.body = root.querySelector("#audit-rows");
    this.action = root.querySelector("#audit-action");
    this.result = root.querySelector("#audit-result");
    this.gateway = root.querySelector("#audit-gateway");
    this.status = root.querySelector("#audit-status");
    this.more = root.querySelector("#audit-more");
    this.items = [];
    this.next = null;
    this.loading = null;
    for (const input of [this.action, this.result]) input.addEventListener("change", () => this.refresh());
    this.gateway.addEventListener("change", () => this.refresh());
    this.more.addEventListener("click", () => this.load(this.next));
    root.querySelector("#audit-csv").addEventListener("click", () => this.exportCsv());
  }

  params(offset) {
    const gw = this.gateway.value.trim();
    return {
      action: this.action.value || null, result: this.result.value || null,
      gateway: gw || null, offset, limit: PAGE,
    };
  }

  /** The newest page again (filters changed, or the poll). */
  refresh() { return this.load(0); }

  async load(offset) {
    const wanted = JSON.stringify(this.params(0));
    const run = (this.loading = this.api.get("/v1/audit", this.params(offset)));
    let page;
    try {
      page = await run;
    } catch (exc) {
      if (this.loading === run) this.status.textContent = `Audit trail not loaded: ${exc.message}`;
      return;
    } finally {
      if (this.loading === run) this.loading = null;
    }
    if (wanted !== JSON.stringify(this.params(0))) return; // the filters changed meanwhile
    this.items = offset ? this.items.concat(page.items) : page.items;
    this.next = page.next_offset;
    this.render(page.total);
  }

  render(total) {
    this.status.textContent = `${this.items.length} of ${total} entr${total === 1 ? "y" : "ies"}`;
    this.root.dataset.ready = "true";
    this.root.dataset.total = String(total);
    this.more.hidden = this.next === null || this.next === undefined;
    clear(this.body);
    for (const e of this.items) {
      const who = e.actor && (e.actor.name || e.actor.key_id) ? `${e.actor.name || e.actor.key_id} (${e.actor.role || "?"})` : "–";
      const bad = /^(refused|failed|timeout)/.test(e.result);
      this.body.append(el("tr", { "data-id": String(e.id), "data-action": e.action, "data-result": e.result },
        el("td", {}, el("time", { datetime: e.at, title: fmtDateTime(e.at) }, ago(e.at))),
        el("td", {}, who),
        el("td", { class: "action" }, e.action),
        el("td", {}, e.gateway || e.target || "–"),
        el("td", { class: bad ? "warn" : "", title: e.result_at ? `at ${fmtDateTime(e.result_at)}` : "" }, e.result)));
    }
    if (!this.items.length) this.body.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No entries match.")));
  }

  exportCsv() {
    const rows = [["at", "key", "key name", "role", "action", "gateway", "target", "result", "result at", "detail"]];
    for (const e of this.items) {
      const a = e.actor || {};
      rows.push([e.at, a.key_id, a.name, a.role, e.action, e.gateway, e.target, e.result, e.result_at, JSON.stringify(e.detail || {})]);
    }
    downloadCsv("audit.csv", rows);
  }
}
