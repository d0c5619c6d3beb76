// The level of the received audio, measured with a Web Audio AnalyserNode.
// Chrome only feeds a remote WebRTC stream to Web Audio while a media element plays it, so the
// stream goes to an <audio> element for playback and to the analyser (unconnected) for measuring.

export const FLOOR_DB = -60;

export class LevelMeter {
  constructor({ intervalMs = 50, onLevel = () => {} } = {}) {
    this.ctx = null;
    this.source = null;
    this.analyser = null;
    this.samples = null;
    this.now = 0; // RMS of the last analyser window, 0..1
    this.max = 0; // the largest `now` since this meter started
    this.onLevel = onLevel;
    this.intervalMs = intervalMs;
    this.timer = null;
  }

  /** Create the AudioContext; call it from a user gesture (Join) where autoplay is restricted. */
  prepare() {
    if (!this.ctx) this.ctx = new AudioContext();
    if (this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
    return this.ctx;
  }

  attach(stream) {
    const ctx = this.prepare();
    if (this.source) this.source.disconnect();
    this.source = ctx.createMediaStreamSource(stream);
    this.analyser = ctx.createAnalyser();
    this.analyser.fftSize = 2048; // ~43 ms at 48 kHz: about two Opus frames per reading
    this.samples = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
    if (!this.timer) this.timer = setInterval(() => this._read(), this.intervalMs);
  }

  _read() {
    if (!this.analyser) return;
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const s of this.samples) sum += s * s;
    this.now = Math.sqrt(sum / this.samples.length);
    if (this.now > this.max) this.max = this.now;
    this.onLevel(this.now);
  }

  detach() {
    if (this.source) this.source.disconnect();
    this.source = null;
    this.analyser = null;
    this.now = 0;
    this.onLevel(0);
  }
}

/** RMS 0..1 → dBFS, clamped to FLOOR_DB. */
export function toDb(rms) {
  return rms > 0 ? Math.max(FLOOR_DB, 20 * Math.log10(rms)) : FLOOR_DB;
}

/** RMS 0..1 → 0..1 on a dB scale, for a bar's width. */
export function toBar(rms) {
  return (toDb(rms) - FLOOR_DB) / -FLOOR_DB;
}

/** Play a received stream in an <audio> element; resolves false when autoplay was refused. */
export async function play(audioEl, stream) {
  audioEl.srcObject = stream;
  try {
    await audioEl.play();
    return true;
  } catch {
    return false;
  }
}
