// History charts with the vendored uPlot (vendor/uPlot.esm.js, MIT).

import uPlot from "./vendor/uPlot.esm.js";
import { el, clear, fmtNumber } from "./util.js";

/** Ranges offered, with the aggregation window that keeps each under a few hundred points. */
export const RANGES = [
  { id: "15m", label: "15 min", seconds: 900, window: "10s" },
  { id: "1h", label: "1 h", seconds: 3600, window: "30s" },
  { id: "6h", label: "6 h", seconds: 21600, window: "2m" },
  { id: "24h", label: "24 h", seconds: 86400, window: "10m" },
];

export class HistoryChart {
  constructor(host) {
    this.host = host;
    this.plot = null;
    this.resize = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize(this._size());
    });
    this.resize.observe(host);
  }

  _size() {
    const width = Math.max(240, Math.floor(this.host.clientWidth || 360));
    return { width, height: Math.round(Math.min(240, Math.max(160, width * 0.45))) };
  }

  destroy() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
    clear(this.host);
    delete this.host.dataset.points;
  }

  message(text) {
    this.destroy();
    this.host.append(el("p", { class: "muted" }, text));
    this.host.dataset.state = "empty";
  }

  /** Draw ``points`` ([{time, value}]) of one field; return a one-line summary for screen readers. */
  draw(points, { label, unit, start, end }) {
    this.destroy();
    const xs = [];
    const ys = [];
    for (const p of points) {
      const t = Date.parse(p.time) / 1000;
      const v = typeof p.value === "number" ? p.value : (typeof p.value === "boolean" ? Number(p.value) : null);
      if (Number.isFinite(t)) {
        xs.push(t);
        ys.push(v);
      }
    }
    if (!xs.length) {
      this.message("No data in this range.");
      return "No data in this range.";
    }
    const opts = {
      ...this._size(),
      cursor: { drag: { x: true, y: false } },
      legend: { show: true, live: true },
      scales: {
        // The asked-for range, not the data's: one point must not stretch the axis to years.
        x: { time: true, range: (_u, min, max) => [start ?? min, end ?? max] },
      },
      series: [
        { label: "Time" },
        {
          label: unit ? `${label} (${unit})` : label,
          stroke: "#0b57d0", width: 2, fill: "rgba(11, 87, 208, 0.10)",
          points: { show: xs.length < 80, size: 5 },
          value: (_u, v) => (v === null || v === undefined ? "–" : fmtNumber(v, 2)),
        },
      ],
      axes: [
        { stroke: "#1f1f1f", grid: { stroke: "#e3e3e3" }, ticks: { stroke: "#c7c7c7" } },
        { stroke: "#1f1f1f", grid: { stroke: "#e3e3e3" }, ticks: { stroke: "#c7c7c7" }, size: 56 },
      ],
    };
    this.plot = new uPlot(opts, [xs, ys], this.host);
    this.host.dataset.points = String(xs.length);
    this.host.dataset.state = "drawn";
    const values = ys.filter((v) => typeof v === "number");
    if (!values.length) return "No numeric data in this range.";
    const min = Math.min(...values);
    const max = Math.max(...values);
    const u = unit ? ` ${unit}` : "";
    return `${label}: ${values.length} points, min ${fmtNumber(min, 2)}${u}, max ${fmtNumber(max, 2)}${u}, latest ${fmtNumber(values.at(-1), 2)}${u}.`;
  }
}
