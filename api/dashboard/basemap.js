// The base map under the SVG drawing: tiles from the XYZ source the API is configured with
// (GET /v1/dashboard/config), drawn by the vendored Leaflet. Loaded only when there is a
// source; without one the page never contacts another host.
//
// The SVG map stays the one the operator drives (drag, wheel, keyboard, search). Leaflet
// takes no input: it follows the SVG's view. map.js projects equirectangularly around the
// city's centre (1 user unit = 1 m east-west at the centre's latitude); Leaflet is Web
// Mercator. Matching the two at the view's centre,
//     px per degree of longitude = 2^z * 256 / 360 = 1 / (u * cos(lat0) * M_PER_DEG)
//     =>  z = log2(360 * M_PER_DEG * cos(lat0) / (256 * u))          (u: units per pixel)
// leaves north-south scale off by cos(lat0)/cos(lat): under 0.1 % (a metre or two) across
// a city, and nothing at the centre.

import { M_PER_DEG } from "./map.js";

/** The tile layer's own limit: beyond the source's deepest level its tiles are scaled. */
const MAX_ZOOM = 24;

export class BaseMap {
  /**
   * @param {object} L  the Leaflet module
   * @param {HTMLElement} host  the map container (the SVG's parent)
   * @param {{url: string, attribution: string, subdomains: string, max_zoom: number}} tiles
   */
  constructor(L, host, tiles) {
    this.host = host;
    this.el = document.createElement("div");
    this.el.className = "basemap";
    this.el.setAttribute("aria-hidden", "true");
    host.prepend(this.el);
    host.classList.add("with-tiles");
    this.map = L.map(this.el, {
      zoomControl: false, attributionControl: false, keyboard: false, dragging: false,
      touchZoom: false, scrollWheelZoom: false, doubleClickZoom: false, boxZoom: false,
      zoomSnap: 0, zoomAnimation: false, fadeAnimation: false, markerZoomAnimation: false,
      inertia: false, minZoom: 0, maxZoom: MAX_ZOOM,
    });
    this.loaded = 0;
    this.failed = 0;
    this.layer = L.tileLayer(tiles.url, {
      subdomains: tiles.subdomains || "abc",
      maxNativeZoom: tiles.max_zoom,
      maxZoom: MAX_ZOOM,
      // The page itself sends no referrer; tile servers ask for the site's origin.
      referrerPolicy: "strict-origin-when-cross-origin",
      keepBuffer: 1,
    });
    this.layer.on("tileload", () => { this.loaded += 1; this._status(); });
    this.layer.on("tileerror", () => { this.failed += 1; this._status(); });
    this.layer.addTo(this.map);
    // Attribution as plain text (never HTML from settings), visible on the map.
    this.credit = document.createElement("p");
    this.credit.className = "map-attribution";
    this.credit.textContent = tiles.attribution;
    host.append(this.credit);
    host.dataset.tiles = "loading";
  }

  /** Show or hide the tiles (the drawing stays); the attribution goes with them. */
  setVisible(visible) {
    this.el.hidden = !visible;
    this.credit.hidden = !visible;
    this.host.classList.toggle("with-tiles", visible && this.host.dataset.tiles !== "unavailable");
  }

  _status() {
    this.host.dataset.tilesLoaded = String(this.loaded);
    this.host.dataset.tilesFailed = String(this.failed);
    // A base map that cannot be fetched (offline, blocked) leaves the drawing as it was.
    this.host.dataset.tiles = this.loaded ? "shown" : this.failed ? "unavailable" : "loading";
    this.host.classList.toggle("with-tiles", this.host.dataset.tiles !== "unavailable");
  }

  /**
   * Show the area the SVG shows.
   * @param {[number, number]} centre  [lat, lon] of the view's centre
   * @param {number} unitsPerPx  SVG user units (metres) per screen pixel
   * @param {number} lat0  latitude of the SVG projection's origin
   */
  follow(centre, unitsPerPx, lat0) {
    if (!(unitsPerPx > 0)) return;
    const z = Math.log2((360 * M_PER_DEG * Math.cos((lat0 * Math.PI) / 180)) / (256 * unitsPerPx));
    const zoom = Math.min(Math.max(z, 0), MAX_ZOOM);
    this.map.invalidateSize({ animate: false, pan: false });
    this.map.setView(centre, zoom, { animate: false });
    this.host.dataset.tileZoom = zoom.toFixed(3);
  }
}

/** Load Leaflet (and its stylesheet) and put a base map under `cityMap`. */
export async function attachBaseMap(cityMap, tiles) {
  const css = document.createElement("link");
  css.rel = "stylesheet";
  css.href = "vendor/leaflet.css";
  document.head.append(css);
  const L = await import("./vendor/leaflet.esm.js");
  const base = new BaseMap(L, cityMap.host, tiles);
  cityMap.onView = (centre, unitsPerPx, lat0) => base.follow(centre, unitsPerPx, lat0);
  cityMap.notifyView();
  return base;
}
