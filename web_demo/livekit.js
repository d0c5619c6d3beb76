// LiveKit mode: the page joins a LiveKit room with livekit-client, the same protocol on reliable
// data packets with topic `tts` (shared/PROTOCOL.md). The module is imported at run time, and
// only when a token's URL is ws(s)://, so embedded mode loads nothing from the network.
// Its URL is `?lk=…` (a self-hosted copy, e.g. with no internet) or the pinned CDN build below.

export const LIVEKIT_CLIENT_VERSION = "2.23.0";
// the package's own ESM build (`exports["."].import`): one self-contained file, no bare imports
export const DEFAULT_MODULE_URL =
  `https://cdn.jsdelivr.net/npm/livekit-client@${LIVEKIT_CLIENT_VERSION}/dist/livekit-client.esm.mjs`;
const TOPIC = "tts";

export const isLiveKitUrl = (url) => /^wss?:\/\//i.test(url || "");

/** livekit-client could not be imported (no network, wrong `?lk=`, not the package). */
export class LiveKitLoadError extends Error {
  constructor(moduleUrl, cause) {
    super(`LiveKit mode: could not load livekit-client from ${moduleUrl} (${cause.message || cause}). ` +
          "Serve a copy of livekit-client's dist/livekit-client.esm.mjs and open this page with ?lk=<its URL>.");
    this.code = "livekit_module";
    this.moduleUrl = moduleUrl;
  }
}

/** The module loaded but the room could not be joined (server unreachable, token refused). */
export class LiveKitConnectError extends Error {
  constructor(url, cause) {
    super(`LiveKit mode: could not join the room at ${url}: ${cause.message || cause}`);
    this.code = "livekit_connect";
  }
}

const modules = new Map(); // absolute module URL -> Promise of the module

/** Import livekit-client once per URL; a failed import is forgotten so that Join can retry it. */
export function loadLiveKit(moduleUrl) {
  // relative to the page, not to this file: `?lk=/static/livekit-client.esm.mjs` means what it says
  const url = new URL(moduleUrl, location.href);
  const href = url.href;
  // `?lk=` runs a script with this page's rights (and its token): only this origin, a loopback
  // host or the pinned CDN build may be loaded, never an address a link made up.
  const trusted = url.origin === location.origin || ["127.0.0.1", "localhost", "[::1]"].includes(url.hostname) ||
    href === DEFAULT_MODULE_URL;
  if (!trusted) return Promise.reject(new LiveKitLoadError(href, "refused: ?lk= must be on this origin or loopback"));
  let loading = modules.get(href);
  if (!loading) {
    loading = import(href).then(
      (lk) => {
        if (typeof lk.Room !== "function" || !lk.RoomEvent) throw new LiveKitLoadError(href, "not livekit-client: no Room export");
        return lk;
      },
      (err) => {
        throw new LiveKitLoadError(href, err);
      });
    loading.catch(() => modules.delete(href));
    modules.set(href, loading);
  }
  return loading;
}

/**
 * One LiveKit room, with the interface of WhepSession: connect(), send(message), close(),
 * replaceMic(track), micPacketsSent(); handlers onEvent(event), onTrack(MediaStream) for the
 * agent's audio, onClosed(reason) once when the room goes away after joining.
 */
export class LiveKitSession {
  constructor({ url, token, mic = null, moduleUrl = DEFAULT_MODULE_URL,
                onEvent = () => {}, onTrack = () => {}, onClosed = () => {} }) {
    this.transport = "livekit";
    this.url = url;
    this.token = token;
    this.mic = mic;
    this.moduleUrl = moduleUrl;
    this.handlers = { onEvent, onTrack, onClosed };
    this.lk = null;
    this.room = null;
    this.micPublication = null;
    this.joined = false;
    this.closed = false;
  }

  get sendsMic() {
    return this.mic !== null;
  }

  // LiveKit publishes and unpublishes tracks at any time: no new session needed for the microphone
  get canAddMic() {
    return true;
  }

  get label() {
    return `LiveKit room ${this.room ? this.room.name : "?"} at ${this.url} (livekit-client ${this.lk ? this.lk.version : "?"})`;
  }

  async connect() {
    const lk = (this.lk = await loadLiveKit(this.moduleUrl));
    const room = (this.room = new lk.Room());
    room.on(lk.RoomEvent.DataReceived, (payload, participant, kind, topic) => {
      if (topic !== TOPIC) return;
      let ev;
      try {
        ev = JSON.parse(new TextDecoder().decode(payload));
      } catch {
        ev = { type: "unparsed", data: String(payload) };
      }
      this.handlers.onEvent(ev);
    });
    // only the agent's voice goes to the player and the meter, not other people's microphones
    room.on(lk.RoomEvent.TrackSubscribed, (track, publication, participant) => {
      if (track.kind !== lk.Track.Kind.Audio || !participant.isAgent) return;
      this.handlers.onTrack(new MediaStream([track.mediaStreamTrack]));
    });
    room.on(lk.RoomEvent.Disconnected, (reason) => {
      if (this.joined) this._lost(`LiveKit disconnected (${lk.DisconnectReason?.[reason] ?? reason})`);
    });
    try {
      await room.connect(this.url, this.token);
    } catch (err) {
      this.closed = true;
      room.disconnect().catch(() => {});
      throw new LiveKitConnectError(this.url, err);
    }
    this.joined = true;
    if (this.mic) await this.replaceMic(this.mic);
  }

  /** Send one protocol message; false when not in the room. */
  send(message) {
    if (!this.room || this.closed || this.room.state !== "connected") return false;
    const bytes = new TextEncoder().encode(JSON.stringify(message));
    this.room.localParticipant.publishData(bytes, { reliable: true, topic: TOPIC })
      .catch((err) => console.warn("livekit: publishData failed", err));
    return true;
  }

  /** Publish `track` as the microphone, replacing the one published before (null: none). */
  async replaceMic(track) {
    if (!this.joined) {
      this.mic = track; // connect() publishes it
      return;
    }
    const participant = this.room.localParticipant;
    if (this.micPublication) {
      await participant.unpublishTrack(this.micPublication.track, false); // the page stops its own tracks
      this.micPublication = null;
    }
    this.mic = track;
    if (track) this.micPublication = await participant.publishTrack(track, { source: this.lk.Track.Source.Microphone });
  }

  async micPacketsSent() {
    const local = this.micPublication && this.micPublication.track;
    const report = local && (await local.getRTCStatsReport());
    let sent = 0;
    if (report) report.forEach((s) => { if (s.type === "outbound-rtp" && s.kind === "audio") sent += s.packetsSent; });
    return sent;
  }

  _lost(reason) {
    if (this.closed) return;
    this.closed = true;
    this.handlers.onClosed(reason);
  }

  async close() {
    this.closed = true;
    if (this.room) await this.room.disconnect();
  }
}
