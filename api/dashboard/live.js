// Live push over the API's WebSocket, reconnecting by itself.
//
// The key is sent as the first message ({"type": "auth"}), so it never appears in a URL
// (proxies log URLs). On every (re)connect the caller resynchronises with REST, because
// events published while disconnected are not replayed; "dropped" events ask for the same.

import { backoff } from "./util.js";

const KINDS = ["vehicle", "traffic", "parking", "air", "alert", "gateway"];

export class LiveStream {
  /**
   * @param {() => string|null} getKey  the current key (read at each connect)
   * @param {{onEvent: Function, onStatus: Function, onResync: Function, onAuthFailed: Function}} handlers
   */
  constructor(getKey, handlers) {
    this.getKey = getKey;
    this.handlers = handlers;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.watchdog = null;
    this.stopped = true;
    this.heartbeatS = 20;
    this.lastMessage = 0;
  }

  start() {
    this.stopped = false;
    this._connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.watchdog);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000, "signed out");
      this.ws = null;
    }
    this.handlers.onStatus("stopped");
  }

  /** Drop the current connection (tests, and the watchdog); a reconnect follows. */
  reconnectNow() {
    if (this.ws) this.ws.close(4000, "reconnect");
  }

  _connect() {
    if (this.stopped) return;
    const key = this.getKey();
    if (!key) return;
    const url = new URL("/v1/stream/ws", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("kind", KINDS.join(","));
    this.handlers.onStatus("connecting");
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      this._retry();
      return;
    }
    this.ws = ws;
    let greeted = false;
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", key }));
    ws.onmessage = (msg) => {
      this.lastMessage = Date.now();
      let event;
      try {
        event = JSON.parse(msg.data);
      } catch {
        return;
      }
      if (event.type === "hello") {
        greeted = true;
        this.attempt = 0;
        this.handlers.onStatus("live");
        this.handlers.onResync("connected");
        return;
      }
      if (event.type === "dropped") {
        this.handlers.onResync("dropped");
        return;
      }
      if (event.type === "heartbeat") return;
      this.handlers.onEvent(event);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (e.code === 1008 && !greeted) {
        // Refused: bad key or a bad filter. Let the app check the key over REST.
        this.handlers.onAuthFailed(e.reason || "refused");
      }
      this._retry();
    };
    ws.onerror = () => {};
    clearInterval(this.watchdog);
    // The server sends a heartbeat every stream_heartbeat_s; silence for three is a dead link.
    this.watchdog = setInterval(() => {
      if (this.ws === ws && greeted && Date.now() - this.lastMessage > 3 * this.heartbeatS * 1000) {
        ws.close(4001, "no heartbeat");
      }
    }, 5000);
  }

  _retry() {
    if (this.stopped) return;
    const delay = backoff(this.attempt);
    this.attempt += 1;
    this.handlers.onStatus("reconnecting", delay);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this._connect(), delay * 1000);
  }
}
