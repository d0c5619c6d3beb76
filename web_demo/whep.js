// WHEP (RFC 9725) client for the agent's embedded rooms: one complete offer (no trickle ICE),
// `201 Created` + Location + answer back, DELETE Location to leave. The `tts` data channel
// carries the room protocol (shared/PROTOCOL.md) as JSON text.

const DISCONNECTED_GRACE_MS = 5000;

export class WhepError extends Error {
  constructor(status, detail) {
    super(`WHEP ${status}: ${detail}`);
    this.status = status;
  }
}

/** Problem details (RFC 9457) → one readable line. */
export async function problemText(resp) {
  const text = await resp.text();
  try {
    const body = JSON.parse(text);
    return body.detail || body.title || text;
  } catch {
    return text || resp.statusText;
  }
}

/** `{token, url}` from the control plane (open to loopback clients in dev mode): `url` is the
 * agent's own http URL in embedded mode, the LiveKit server's ws(s):// URL in LiveKit mode. */
export async function fetchJoin(room, identity, extra = {}) {
  const resp = await fetch("/v1/tokens", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ room, identity, ...extra }),
  });
  if (!resp.ok) throw new WhepError(resp.status, await problemText(resp));
  const { token, url } = await resp.json();
  return { token, url };
}

/** A room token from the control plane. */
export async function fetchToken(room, identity, extra = {}) {
  return (await fetchJoin(room, identity, extra)).token;
}

function iceGatheringComplete(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    // Past the timeout, send what was gathered: host candidates come first and suffice here.
    const timer = setTimeout(() => {
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    }, timeoutMs);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

/**
 * One WHEP session. Handlers: onEvent(event object), onTrack(MediaStream),
 * onClosed(reason) once when the connection or the data channel goes away.
 * `mic` (a MediaStreamTrack) makes the audio section sendrecv, for barge-in.
 */
export class WhepSession {
  constructor({ room, token, mic = null, onEvent = () => {}, onTrack = () => {}, onClosed = () => {} }) {
    this.transport = "whep";
    this.endpoint = new URL(`/v1/rooms/${encodeURIComponent(room)}/whep`, location.href).href;
    this.token = token;
    this.mic = mic;
    this.handlers = { onEvent, onTrack, onClosed };
    this.pc = null;
    this.channel = null;
    this.location = null;
    this.closed = false;
  }

  get sendsMic() {
    return this.mic !== null;
  }

  // WHEP has no renegotiation: only a session offered with a microphone can swap it
  get canAddMic() {
    return this.sendsMic;
  }

  get label() {
    return `WHEP session ${this.location}`;
  }

  async connect() {
    const pc = (this.pc = new RTCPeerConnection());
    if (this.mic) {
      this.transceiver = pc.addTransceiver(this.mic, { direction: "sendrecv", streams: [new MediaStream([this.mic])] });
    } else {
      this.transceiver = pc.addTransceiver("audio", { direction: "recvonly" });
    }
    const channel = (this.channel = pc.createDataChannel("tts"));
    channel.onmessage = (msg) => {
      let ev;
      try {
        ev = JSON.parse(msg.data);
      } catch {
        ev = { type: "unparsed", data: String(msg.data) };
      }
      this.handlers.onEvent(ev);
    };
    channel.onclose = () => this._lost("data channel closed");
    pc.ontrack = (e) => this.handlers.onTrack(e.streams[0] || new MediaStream([e.track]));
    pc.onconnectionstatechange = () => {
      clearTimeout(this._disconnectTimer);
      if (pc.connectionState === "failed" || pc.connectionState === "closed") this._lost(`connection ${pc.connectionState}`);
      // "disconnected" may heal by itself; one that lasts is as good as lost
      if (pc.connectionState === "disconnected") {
        this._disconnectTimer = setTimeout(() => this._lost("connection disconnected"), DISCONNECTED_GRACE_MS);
      }
    };

    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc, 3000);
    const resp = await fetch(this.endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${this.token}` },
      body: pc.localDescription.sdp,
    });
    if (resp.status !== 201) {
      const detail = await problemText(resp);
      this.closed = true;
      pc.close();
      throw new WhepError(resp.status, detail);
    }
    this.location = new URL(resp.headers.get("Location"), this.endpoint).href;
    await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
  }

  /** Send one protocol message; false when the channel is not open. */
  send(message) {
    if (!this.channel || this.channel.readyState !== "open") return false;
    this.channel.send(JSON.stringify(message));
    return true;
  }

  /** Swap the microphone on a sendrecv session without renegotiating (null: send nothing). */
  async replaceMic(track) {
    if (!this.mic && track) throw new Error("this session was negotiated without a microphone");
    await this.transceiver.sender.replaceTrack(track);
  }

  /** RTP packets of the microphone sent so far (from the peer connection's stats). */
  async micPacketsSent() {
    if (!this.pc) return 0;
    let sent = 0;
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "audio") sent += s.packetsSent;
    });
    return sent;
  }

  _lost(reason) {
    clearTimeout(this._disconnectTimer);
    if (this.closed) return;
    this.closed = true;
    this.handlers.onClosed(reason);
  }

  /** Leave: DELETE the session, then close the peer (closing first would make the agent reap the
   * session and answer the DELETE with 404). keepalive: it also works from pagehide. */
  async close() {
    clearTimeout(this._disconnectTimer);
    this.closed = true;
    const loc = this.location;
    this.location = null;
    const deleted = loc
      ? fetch(loc, { method: "DELETE", headers: { Authorization: `Bearer ${this.token}` }, keepalive: true })
      : null;
    try {
      if (deleted) await deleted;
    } catch {
      // the agent also reaps sessions whose peer went away
    }
    if (this.pc) this.pc.close();
  }
}
