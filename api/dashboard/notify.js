// Telling the operator about a new critical alert: a short beep (WebAudio, no sound file),
// a desktop notification (Notification API, permission asked on a click), and the count in
// the page title (app.js). The sound can be switched off; the choice lasts for this tab.

const SOUND_KEY = "smartcity.sound";
const $ = (sel) => document.querySelector(sel);

export class Notifier {
  constructor() {
    this.audio = null;
    this.box = $("#sound-toggle");
    this.button = $("#notify-enable");
    $("#notify-controls").hidden = false;
    this.box.checked = sessionStorage.getItem(SOUND_KEY) !== "off";
    this.box.addEventListener("change", () => {
      if (this.box.checked) sessionStorage.removeItem(SOUND_KEY);
      else sessionStorage.setItem(SOUND_KEY, "off");
    });
    // Browsers start audio only after a user gesture: prepare it on the first one.
    const unlock = () => {
      this._context();
      window.removeEventListener("pointerdown", unlock);
      window.removeEventListener("keydown", unlock);
    };
    window.addEventListener("pointerdown", unlock);
    window.addEventListener("keydown", unlock);
    this._showPermission();
    this.button.addEventListener("click", async () => {
      if (!("Notification" in window)) return;
      try {
        await Notification.requestPermission();
      } catch {
        // an old browser's callback form, or refused: the button says which
      }
      this._showPermission();
    });
    this.beeps = 0;
    this.notified = 0;
  }

  _showPermission() {
    const supported = "Notification" in window;
    const state = supported ? Notification.permission : "unsupported";
    this.button.dataset.permission = state;
    this.button.textContent = state === "granted" ? "Desktop alerts on" : state === "denied" ? "Desktop alerts blocked" : "Desktop alerts";
    this.button.disabled = state !== "default";
    this.button.title = state === "denied" ? "Allow notifications for this site in the browser's settings" : state === "unsupported" ? "This browser has no notifications" : "";
  }

  _context() {
    if (!this.audio) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) return null;
      this.audio = new Ctx();
    }
    if (this.audio.state === "suspended") this.audio.resume().catch(() => {});
    return this.audio;
  }

  /** Two short tones; silent when switched off or the browser has not allowed audio yet. */
  beep() {
    if (!this.box.checked) return false;
    const ctx = this._context();
    if (!ctx || ctx.state !== "running") return false;
    const t = ctx.currentTime;
    for (const [start, freq] of [[0, 880], [0.22, 660]]) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = "sine";
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, t + start);
      gain.gain.exponentialRampToValueAtTime(0.25, t + start + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + start + 0.18);
      osc.connect(gain).connect(ctx.destination);
      osc.start(t + start);
      osc.stop(t + start + 0.2);
    }
    return true;
  }

  critical(alert) {
    if (this.beep()) this.beeps += 1;
    document.body.dataset.beeps = String(this.beeps);
    if ("Notification" in window && Notification.permission === "granted") {
      const subject = alert.device ? `${alert.gateway}/${alert.device}` : alert.gateway;
      try {
        const n = new Notification(`Critical: ${alert.rule}`, { body: `${subject}: ${alert.message}`, tag: alert.id });
        n.onclick = () => window.focus();
        this.notified += 1;
        document.body.dataset.notified = String(this.notified);
      } catch {
        // some platforms allow notifications only from a service worker: the title and sound remain
      }
    }
  }
}
