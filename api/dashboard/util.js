// Small DOM and formatting helpers. Text always goes through textContent, never innerHTML.

export const SVG_NS = "http://www.w3.org/2000/svg";

/** Create an element: el("li", {class: "x", "data-id": id}, "text", child, ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  return node;
}

function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else node.setAttribute(name, value === true ? "" : String(value));
  }
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
}

// Times in the city's time zone (GET /v1/dashboard/config; the browser's when it has none),
// in the browser's language.
let timeFmt = null;
let dateTimeFmt = null;
export let timeZone = undefined;

export function setTimeZone(zone) {
  timeZone = zone || undefined;
  let opts = { timeZone };
  try {
    new Intl.DateTimeFormat(undefined, opts);
  } catch {
    timeZone = undefined;
    opts = {};
  }
  timeFmt = new Intl.DateTimeFormat(undefined, { ...opts, hour: "2-digit", minute: "2-digit", second: "2-digit" });
  dateTimeFmt = new Intl.DateTimeFormat(undefined, {
    ...opts, year: "numeric", month: "short", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  });
}
setTimeZone(undefined);

export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "–" : timeFmt.format(d);
}

export function fmtDateTime(iso) {
  if (!iso) return "never";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "unknown" : dateTimeFmt.format(d);
}

/** "1 h 5 min", "3 min", "40 s": a duration in seconds for people. */
export function fmtDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}

// The wire contract's UCUM-style symbols as people write them. Ratios (unit "1" on a field
// whose name says it is a share) are shown as percentages.
const UNIT_TEXT = {
  "ug/m3": "µg/m³", "mg/m3": "mg/m³", m3: "m³", "m3/h": "m³/h", Cel: "°C", deg: "°",
  "1": "", "-": "", dBA: "dB(A)",
};
const SHARE_FIELDS = new Set(["occupancy", "humidity", "relativeHumidity", "speedRatio", "ratio", "fillLevel"]);

export function unitText(unit) {
  return unit in UNIT_TEXT ? UNIT_TEXT[unit] : (unit || "");
}

/** A field's value and unit for people: [text, unit], e.g. [71.1, "%"] for humidity 0.711. */
export function fieldValue(name, value, unit) {
  if (typeof value !== "number") return [value === undefined || value === null ? "–" : String(value), unitText(unit)];
  if (name === "latitude" || name === "longitude") return [value.toFixed(5), "°"];
  if (SHARE_FIELDS.has(name) && (unit === "1" || !unit) && value >= 0 && value <= 1) {
    return [fmtNumber(value * 100, 1), "%"];
  }
  return [fmtNumber(value, 3), unitText(unit)];
}

/** Rule names and messages written with wire units ("ug/m3") read with people's units. */
export function humanText(text) {
  return String(text ?? "").replace(/ug\/m3/g, "µg/m³").replace(/\bCel\b/g, "°C");
}

/** "12 s ago", "5 min ago", "3 h ago", "2 d ago" (or "in 4 s" for clocks ahead). */
export function ago(iso, now = Date.now()) {
  if (!iso) return "never";
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return "unknown";
  const s = Math.round((now - t) / 1000);
  const a = Math.abs(s);
  const text = a < 60 ? `${a} s` : a < 3600 ? `${Math.round(a / 60)} min`
    : a < 86400 ? `${Math.round(a / 3600)} h` : `${Math.round(a / 86400)} d`;
  return s >= 0 ? `${text} ago` : `in ${text}`;
}

export function fmtNumber(value, digits = 1) {
  if (typeof value !== "number" || !Number.isFinite(value)) return value === undefined ? "–" : String(value);
  const abs = Math.abs(value);
  const d = Number.isInteger(value) ? 0 : abs >= 1000 ? 0 : abs >= 100 ? Math.min(digits, 1) : digits;
  return value.toLocaleString(undefined, { maximumFractionDigits: d, minimumFractionDigits: 0 });
}

/** A whole number without grouping separators (map labels: "436", never "4 36"). */
export function fmtCount(value) {
  return typeof value === "number" && Number.isFinite(value) ? String(Math.round(value)) : "?";
}

export function pct(ratio) {
  return typeof ratio === "number" && Number.isFinite(ratio) ? `${(ratio * 100).toFixed(1)} %` : "–";
}

/** Capped, jittered exponential backoff (seconds): attempt 0 -> ~base. */
export function backoff(attempt, base = 0.5, cap = 15) {
  const ceiling = Math.min(cap, base * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}
