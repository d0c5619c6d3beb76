// /demo: join a room (embedded WHEP, or LiveKit when the token's URL is ws(s)://), speak into it,
// watch its events, utterances and level.
// Options: &token=… (&url=wss://… with it for a LiveKit room), &lk=… (where livekit-client is loaded
// from in LiveKit mode), &autojoin=1.
import { fetchJoin } from "./whep.js";
import { createSession } from "./session.js";
import { LevelMeter, toBar, toDb, play } from "./level.js";
import { CaptionTrack } from "./captions.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const room = params.get("room") || "demo";
const identity = params.get("identity") || `web-${Math.random().toString(36).slice(2, 6)}`;
const MAX_LOG_ROWS = 500;
const MIC_CONSTRAINTS = { audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true }, video: false };

// The testing hook: the page's state, every event received, the analyser level, each utterance.
const demo = (window.demo = {
  room,
  identity,
  state: "idle", // idle | joining | joined | disconnected | error
  transport: null, // whep | livekit, once Join was pressed
  error: null, // {code, message} of the last failed join (code: livekit_module, livekit_connect, http_<status>, join)
  events: [],
  level: { now: 0, max: 0 },
  utterances: {}, // id -> {id, from, text, fate, reason, ttfa_ms, audio_ms, peak}
  talking: {}, // participant -> true while a `user_speech started` is not yet stopped
  bargeIn: false,
  paused: false, // between a `paused` and its `resumed`
  sendsMic: false,
  // RTP packets of the microphone sent so far in this session (from the peer connection's stats)
  async micPacketsSent() {
    return session ? session.micPacketsSent() : 0;
  },
});

let session = null;
let mic = null; // the microphone track while "talk to interrupt" is on
let playing = null; // id of the utterance whose audio is playing now
let sent = 0;
const captionTracks = new Map(); // utterance id -> CaptionTrack
const meter = new LevelMeter({ onLevel: showLevel });

function setState(state, text) {
  demo.state = state;
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text || state;
  const joined = state === "joined";
  $("speak").disabled = !joined;
  $("interrupt").disabled = !joined;
  showPaused();
  $("join").hidden = joined || state === "joining";
  $("leave").hidden = !(joined || state === "joining");
}

// -- level -------------------------------------------------------------------------------

function showLevel(rms) {
  demo.level.now = rms;
  demo.level.max = Math.max(demo.level.max, rms);
  const u = playing && demo.utterances[playing];
  if (u) u.peak = Math.max(u.peak, rms);
  $("level-bar").style.width = `${(toBar(rms) * 100).toFixed(1)}%`;
  $("level-db").textContent = `${toDb(rms).toFixed(0)} dBFS`;
  $("level-peak").textContent = `${toDb(demo.level.max).toFixed(0)} dBFS`;
}

// -- event log ---------------------------------------------------------------------------

function logLine(kind, text, cls = "") {
  const li = document.createElement("li");
  li.className = cls;
  const time = document.createElement("time");
  time.textContent = new Date().toISOString().slice(11, 23);
  const type = document.createElement("b");
  type.textContent = kind;
  const body = document.createElement("span");
  body.textContent = text;
  li.append(time, type, body);
  const log = $("log");
  const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
  log.append(li);
  while (log.children.length > MAX_LOG_ROWS) log.firstChild.remove();
  if (stick) log.scrollTop = log.scrollHeight;
}

// Long lists (the 140 voice ids of `ready`) are shortened in the log; demo.events keeps them whole.
const shorten = (key, value) => (Array.isArray(value) && value.length > 6 ? `[${value.length} items]` : value);

function logEvent(ev) {
  const { type, ts, ...rest } = ev;
  const cls = type === "error" ? "bad" : type === "dropped" || type === "interrupted" ? "warn" : "";
  logLine(type, JSON.stringify(rest, shorten), cls);
}

// -- utterances (the chat panel) -----------------------------------------------------------

const FATE_TEXT = {
  sent: () => "sent",
  queued: (u) => `queued #${u.position}`,
  started: () => "speaking",
  finished: () => "spoken",
  interrupted: (u) => `interrupted: ${u.reason}`,
  dropped: (u) => `dropped: ${u.reason}`,
  error: (u) => `error: ${u.reason}`,
};
const OPEN_FATES = new Set(["sent", "queued", "started"]);

function utterance(id) {
  let u = demo.utterances[id];
  if (!u) {
    u = demo.utterances[id] = { id, from: null, text: "", fate: "sent", reason: null, position: null,
                                ttfa_ms: null, audio_ms: null, peak: 0, captions: [] };
  }
  return u;
}

function renderUtterance(u) {
  let tr = document.querySelector(`#utterances tr[data-id="${CSS.escape(u.id)}"]`);
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.id = u.id;
    for (const cls of ["id", "from", "text", "fate", "num ttfa", "num audio", "stop"]) {
      const td = document.createElement("td");
      td.className = cls;
      if (cls === "text") td.append(document.createElement("div")); // clamped to two lines
      tr.append(td);
    }
    const stop = document.createElement("button");
    stop.type = "button";
    stop.className = "small";
    stop.textContent = "stop";
    stop.title = "interrupt this utterance";
    stop.onclick = () => send({ type: "interrupt", id: u.id });
    tr.lastChild.append(stop);
    $("utterances").tBodies[0].prepend(tr);
    $("chat-empty").hidden = true;
  }
  tr.dataset.fate = u.fate;
  const cells = tr.children;
  cells[0].textContent = u.id;
  cells[1].textContent = u.from ?? "—";
  cells[2].title = cells[2].firstChild.textContent = u.text || u.captions.join(" ");
  cells[3].textContent = FATE_TEXT[u.fate](u);
  cells[4].textContent = u.ttfa_ms == null ? "" : `${Math.round(u.ttfa_ms)} ms`;
  cells[5].textContent = u.audio_ms == null ? "" : `${(u.audio_ms / 1000).toFixed(1)} s`;
  cells[6].firstChild.hidden = !OPEN_FATES.has(u.fate);
}

function onEvent(ev) {
  demo.events.push(ev);
  logEvent(ev);
  const id = ev.id;
  switch (ev.type) {
    case "ready":
      setState("joined", `joined as ${identity}`);
      $("voice").options[0].textContent = `room default (${ev.voice})`;
      if (mic) configureBargeIn(true);
      return;
    case "queued":
      Object.assign(utterance(id), { fate: "queued", position: ev.position });
      break;
    case "started":
      Object.assign(utterance(id), { fate: "started", ttfa_ms: ev.ttfa_ms });
      playing = id;
      break;
    case "caption": {
      // only sentences go to the text column; word captions would repeat them
      const track = captionTracks.get(id) || captionTracks.set(id, new CaptionTrack()).get(id);
      if (!track.feed(ev.text)) return;
      utterance(id).captions.push(ev.text);
      break;
    }
    case "finished":
      Object.assign(utterance(id), { fate: "finished", audio_ms: ev.audio_ms });
      if (playing === id) playing = null;
      break;
    case "interrupted":
      Object.assign(utterance(id), { fate: "interrupted", reason: ev.reason, audio_ms: ev.played_ms });
      if (playing === id) playing = null;
      break;
    case "dropped":
      Object.assign(utterance(id), { fate: "dropped", reason: ev.reason });
      break;
    case "error":
      if (id && demo.utterances[id] && OPEN_FATES.has(demo.utterances[id].fate)) {
        Object.assign(demo.utterances[id], { fate: "error", reason: ev.code });
        break;
      }
      return;
    case "user_speech":
      showUserSpeech(ev.participant, ev.state === "started");
      return;
    case "paused":
    case "resumed":
      demo.paused = ev.type === "paused";
      showPaused();
      return;
    default:
      return;
  }
  renderUtterance(demo.utterances[id]);
}

function showPaused() {
  const joined = demo.state === "joined";
  $("pause").disabled = !joined || demo.paused;
  $("resume").disabled = !joined || !demo.paused;
}

function showUserSpeech(participant, talking) {
  if (talking) demo.talking[participant] = true;
  else delete demo.talking[participant];
  const list = $("user-speech");
  list.replaceChildren(...Object.keys(demo.talking).map((p) => {
    const li = document.createElement("li");
    li.textContent = `${p} is talking`;
    return li;
  }));
}

// -- commands ----------------------------------------------------------------------------

function send(message) {
  if (!session || !session.send(message)) {
    logLine("local", `not sent (not joined): ${JSON.stringify(message)}`, "bad");
    return false;
  }
  return true;
}

function speak(e) {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  const id = `${identity}-${++sent}`;
  const message = { type: "synthesize", id, text, priority: $("priority").value };
  if ($("voice").value) message.voice = $("voice").value;
  const from = $("from").value.trim();
  if (from) message.from = from;
  if (!send(message)) return;
  // Our own lines are known before the room answers; others appear with what events tell.
  Object.assign(utterance(id), { from: from || identity, text });
  renderUtterance(demo.utterances[id]);
}

function configureBargeIn(on) {
  demo.bargeIn = on;
  send({ type: "configure", barge_in: { mode: on ? "interrupt" : "off" } });
}

// -- joining -----------------------------------------------------------------------------

const JOIN_ERROR_TEXT = {
  http_401: "no token: add ?token=… to the URL",
  http_403: "no token: add ?token=… to the URL",
  livekit_module: "LiveKit mode: livekit-client could not be loaded (see Events; ?lk= sets its URL)",
  livekit_connect: "LiveKit mode: could not join the LiveKit room (see Events)",
};

async function join() {
  if (session) return;
  setState("joining", "joining…");
  meter.prepare(); // inside the click: the AudioContext may start
  try {
    demo.error = null;
    const { token, url } = params.get("token")
      ? { token: params.get("token"), url: params.get("url") }
      : await fetchJoin(room, identity);
    const s = createSession({
      room, token, url, mic, moduleUrl: params.get("lk"),
      onEvent,
      onTrack: async (stream) => {
        if (!(await play($("player"), stream))) logLine("local", "autoplay refused: click the page to hear audio", "warn");
        meter.attach(stream);
      },
      onClosed: (reason) => {
        if (session !== s) return;
        session = null;
        demo.sendsMic = false;
        meter.detach();
        logLine("local", `disconnected: ${reason}`, "bad");
        setState("disconnected", "disconnected — Join again");
      },
    });
    session = s;
    demo.transport = s.transport;
    demo.sendsMic = s.sendsMic;
    if (s.transport === "livekit") logLine("local", `LiveKit mode: loading livekit-client from ${s.moduleUrl}`);
    await s.connect();
    logLine("local", `${s.label}${s.sendsMic ? " (sending microphone)" : ""}`);
  } catch (err) {
    session = null;
    const message = String(err.message || err);
    demo.error = { code: err.code || (err.status ? `http_${err.status}` : "join"), message };
    logLine("local", message, "bad");
    setState("error", JOIN_ERROR_TEXT[demo.error.code] || "could not join");
  }
}

async function leave() {
  const s = session;
  session = null;
  playing = null;
  demo.sendsMic = false;
  meter.detach();
  $("player").srcObject = null;
  if (s) await s.close();
  setState("idle", "not joined");
}

async function setTalk(on) {
  if (!on) {
    if (demo.bargeIn) configureBargeIn(false);
    if (session && session.sendsMic) {
      await session.replaceMic(null);
      demo.sendsMic = session.sendsMic;
    }
    if (mic) mic.stop();
    mic = null;
    return;
  }
  try {
    mic = (await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS)).getAudioTracks()[0];
  } catch (err) {
    logLine("local", `microphone refused: ${err.message || err}`, "bad");
    $("talk").checked = false;
    return;
  }
  if (!session) return; // the next join sends it
  if (session.canAddMic) {
    await session.replaceMic(mic);
    demo.sendsMic = session.sendsMic;
    configureBargeIn(true);
  } else {
    // WHEP has no renegotiation: a new session with a sendrecv audio section replaces this one
    await leave();
    await join();
  }
}

// -- voices ------------------------------------------------------------------------------

async function loadVoices() {
  try {
    const voices = await (await fetch("/v1/voices")).json();
    const langs = [...new Set(voices.map((v) => v.language.split("-")[0]))].sort();
    $("voice-langs").replaceChildren(...langs.map((tag) => new Option(tag, tag)));
    $("voice-ids").replaceChildren(...voices.map((v) => new Option(`${v.name} — ${v.id}`, v.id)));
  } catch (err) {
    logLine("local", `voices: ${err.message || err}`, "bad");
  }
}

function init() {
  $("room-name").textContent = room;
  document.title = `tts-agent · ${room}`;
  $("listen-link").href = `/demo/listen?room=${encodeURIComponent(room)}`;
  $("join").onclick = join;
  $("leave").onclick = leave;
  $("speak-form").onsubmit = speak;
  $("text").onkeydown = (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("speak-form").requestSubmit();
  };
  $("interrupt").onclick = () => send({ type: "interrupt" });
  $("pause").onclick = (e) => send(e.shiftKey ? { type: "pause", now: true } : { type: "pause" });
  $("resume").onclick = () => send({ type: "resume" });
  $("talk").onchange = (e) => setTalk(e.target.checked);
  addEventListener("pagehide", () => session && session.close());
  setState("idle", "not joined");
  loadVoices();
  if (params.get("autojoin") === "1") join();
}

init();
