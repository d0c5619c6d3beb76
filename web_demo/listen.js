// /demo/listen?room=X: listen-only, autoplays, shows captions large, reconnects by itself.
// Options: &token=… (when tokens are not open, i.e. outside dev mode; &url=wss://… with it for a
// LiveKit room), &lk=… (where livekit-client is loaded from in LiveKit mode), &captions=0.
import { fetchJoin } from "./whep.js";
import { createSession } from "./session.js";
import { LevelMeter, play } from "./level.js";
import { CaptionTrack } from "./captions.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const room = params.get("room") || "demo";
const identity = `listen-${Math.random().toString(36).slice(2, 6)}`;
const CAPTION_HOLD_MS = 2500; // a caption stays this long after its utterance ends
const MAX_BACKOFF_MS = 10000;

// The testing hook: state, every event, the analyser level, captions shown, sessions opened.
const listen = (window.listen = {
  room, identity, state: "connecting", events: [], level: { now: 0, max: 0 }, captions: [], connects: 0,
  transport: null, error: null, // the last failure to connect: {code, message}
});

let session = null;
let failures = 0;
let captionId = null;
let clearTimer = null;
const meter = new LevelMeter({
  onLevel: (rms) => {
    listen.level.now = rms;
    listen.level.max = Math.max(listen.level.max, rms);
  },
});

function setState(state, detail = state) {
  listen.state = state;
  $("status").dataset.state = state;
  $("status").title = detail;
}

let captionTrack = new CaptionTrack();

function showCaption(ev) {
  clearTimeout(clearTimer);
  if (ev.id !== captionId) captionTrack = new CaptionTrack();
  captionId = ev.id;
  if (captionTrack.feed(ev.text)) listen.captions.push(ev.text);
  // the words said so far stand out from the rest of the sentence (karaoke style)
  const line = captionTrack.line;
  const said = captionTrack.word ? captionTrack.word[1] : line.length; // no word timing: all of it
  const el = $("caption");
  const done = document.createElement("span");
  done.className = "said";
  done.textContent = line.slice(0, said);
  el.replaceChildren(done, line.slice(said));
  el.dataset.id = ev.id;
  el.hidden = false;
}

function endCaption(id) {
  if (id !== captionId) return;
  clearTimer = setTimeout(() => {
    $("caption").hidden = true;
    captionId = null;
  }, CAPTION_HOLD_MS);
}

function onEvent(ev) {
  listen.events.push(ev);
  if (ev.type === "ready") {
    failures = 0;
    setState("connected");
  } else if (ev.type === "caption") {
    showCaption(ev);
  } else if (ev.type === "finished" || ev.type === "interrupted") {
    endCaption(ev.id);
  }
}

async function onTrack(stream) {
  meter.attach(stream);
  if (!(await play($("player"), stream))) {
    // outside OBS a browser may refuse autoplay until the page is clicked
    $("unmute").hidden = false;
    $("unmute").onclick = () => {
      $("unmute").hidden = true;
      meter.prepare();
      $("player").play();
    };
  }
}

function reconnectLater(reason) {
  meter.detach();
  const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** failures++);
  setState("reconnecting", `${reason}; retrying in ${delay} ms`);
  console.warn(`listen: ${reason}; reconnecting in ${delay} ms`);
  setTimeout(connect, delay);
}

async function connect() {
  setState(listen.connects ? "reconnecting" : "connecting");
  let s = null;
  try {
    // listen-only token: it may receive but not send commands
    const { token, url } = params.get("token")
      ? { token: params.get("token"), url: params.get("url") }
      : await fetchJoin(room, identity, { can_publish_data: false });
    s = session = createSession({
      room, token, url, moduleUrl: params.get("lk"), onEvent, onTrack,
      onClosed: (reason) => {
        if (session === s) {
          session = null;
          s.close();
          reconnectLater(reason);
        }
      },
    });
    listen.transport = s.transport;
    await s.connect();
    listen.connects += 1;
  } catch (err) {
    if (s && session === s) session = null;
    listen.error = { code: err.code || (err.status ? `http_${err.status}` : "connect"), message: String(err.message || err) };
    reconnectLater(listen.error.message);
  }
}

if (params.get("captions") === "0") document.body.classList.add("no-captions");
addEventListener("pagehide", () => session && session.close());
connect();
