// streamserve demo page: camera in over WebRTC, the server's output beside it, live parameters and stats.
//
// Flow: GET /v1/pipelines fills the picker and the parameter form; Start opens the camera, offers
// (non-trickle: ICE gathered first) to POST /v1/webrtc/offer with {sdp, type, pipeline, params}, and
// plays the answer's video track. A data channel "control" carries {"type":"update","params":{...}}
// (answered with "params" or "error") and the server's "stats" once a second; the overlay adds
// getStats() figures. URL options: ?pipeline=NAME&autostart=1&width=W&height=H&fps=N&mic=1.

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);

const state = {
  pipelines: new Map(), // name -> {name, description, inputs, outputs, params}
  pc: null,
  channel: null,
  stream: null,
  sessionId: null,
  sessionSecret: null,
  serverStats: null,
  clientStats: {},
  prevReport: null,
  statsTimer: null,
  shown: {frames: 0, last: null, since: performance.now(), fps: 0}, // output frames presented
  rtt: null,
  voice: false, // a microphone-only session (the voice agent): no camera or video panes
};
window.streamserve = state; // for the browser test and for poking around in devtools

// --- pipelines and parameters -----------------------------------------------------------------

async function loadPipelines() {
  const [pipelines, health] = await Promise.all([
    fetch("/v1/pipelines").then((r) => r.json()),
    fetch("/healthz").then((r) => r.json()).catch(() => ({})),
  ]);
  const select = $("pipeline");
  select.replaceChildren();
  for (const p of pipelines) {
    state.pipelines.set(p.name, p);
    select.append(new Option(p.name, p.name));
  }
  const wanted = query.get("pipeline") || health.pipeline;
  if (wanted && state.pipelines.has(wanted)) select.value = wanted;
  select.disabled = false;
  $("start").disabled = false;
  renderParams();
}

function renderParams() {
  const info = state.pipelines.get($("pipeline").value);
  const form = $("params");
  form.replaceChildren();
  $("params-error").hidden = true;
  $("pipeline-description").textContent = info ? info.description : "";
  $("mic").closest("label").hidden = isVoice(info); // the voice agent always takes the microphone
  if (!state.pc && $("status").textContent.startsWith("Pick a pipeline")) {
    setStatus(`Pick a pipeline and press Start; the page asks for your ${isVoice(info) ? "microphone" : "camera"}.`);
  }
  if (!info) return;
  const entries = Object.entries(info.params || {});
  if (!entries.length) form.append(Object.assign(document.createElement("span"), {className: "hint", textContent: "no parameters"}));
  for (const [name, spec] of entries) form.append(paramControl(name, spec));
}

function paramControl(name, spec) {
  const label = document.createElement("label");
  label.title = spec.description || spec.help || "";
  label.append(name);
  let input;
  if (spec.type === "bool") {
    input = Object.assign(document.createElement("input"), {type: "checkbox", checked: !!spec.default});
    label.prepend(input);
  } else if (spec.type === "enum" || Array.isArray(spec.choices)) {
    input = document.createElement("select");
    for (const choice of spec.choices || []) input.append(new Option(String(choice), JSON.stringify(choice)));
    input.value = JSON.stringify(spec.default);
    label.append(input);
  } else if (spec.type === "int" || spec.type === "float") {
    const ranged = spec.min !== undefined && spec.max !== undefined;
    input = Object.assign(document.createElement("input"), {
      type: ranged ? "range" : "number",
      step: spec.step ?? (spec.type === "int" ? 1 : "any"),
      value: spec.default ?? 0,
    });
    if (spec.min !== undefined) input.min = spec.min;
    if (spec.max !== undefined) input.max = spec.max;
    label.append(input);
    if (ranged) {
      const out = Object.assign(document.createElement("span"), {className: "hint", textContent: String(input.value)});
      input.addEventListener("input", () => (out.textContent = input.value));
      label.append(out);
    }
  } else {
    const value = Array.isArray(spec.default) ? spec.default.join(", ") : spec.default ?? "";
    input = Object.assign(document.createElement("input"), {type: "text", value});
    if (spec.type === "list") input.placeholder = `comma-separated ${spec.items}s`;
    label.append(input);
  }
  if (spec.nullable && input.tagName === "INPUT" && input.type !== "checkbox") {
    if (spec.default === null || spec.default === undefined) input.value = "";
    input.placeholder ||= "default";
  }
  input.name = name;
  input.dataset.kind = spec.type;
  input.dataset.nullable = spec.nullable ? "1" : "";
  input.dataset.items = spec.items ?? "";
  input.dataset.default = JSON.stringify(spec.default ?? null);
  input.addEventListener("change", () => sendUpdate({[name]: readControl(input)}));
  return label;
}

function readControl(input) {
  if (input.type === "checkbox") return input.checked;
  if (input.tagName === "SELECT") return JSON.parse(input.value);
  // An empty optional field means "the model's default" (null), never an empty string.
  if (input.dataset.nullable && input.value.trim() === "") return null;
  if (input.dataset.kind === "list")
    return input.value.split(",").map((v) => v.trim()).filter(Boolean)
      .map((v) => (input.dataset.items === "str" ? v : Number(v)));
  if (input.dataset.kind === "int") return parseInt(input.value, 10);
  if (input.dataset.kind === "float") return parseFloat(input.value);
  return input.value;
}

function changedParams() {
  const params = {};
  for (const input of $("params").querySelectorAll("[name]")) {
    const value = readControl(input);
    if (JSON.stringify(value) !== input.dataset.default) params[input.name] = value;
  }
  return params;
}

function showParams(params) {
  for (const [name, value] of Object.entries(params)) {
    const input = $("params").querySelector(`[name="${CSS.escape(name)}"]`);
    if (!input) continue;
    input.classList.remove("invalid");
    if (input.type === "checkbox") input.checked = !!value;
    else if (input.tagName === "SELECT") input.value = JSON.stringify(value);
    else input.value = value;
  }
}

function showParamError(err) {
  const box = $("params-error");
  box.textContent = err.message || err.error;
  box.hidden = false;
  const input = err.field && $("params").querySelector(`[name="${CSS.escape(err.field)}"]`);
  if (input) input.classList.add("invalid");
}

function sendUpdate(params) {
  $("params-error").hidden = true;
  if (state.channel?.readyState === "open") state.channel.send(JSON.stringify({type: "update", params}));
  // Before a session starts the values simply go into the offer.
}

// --- the session ----------------------------------------------------------------------------------

function setStatus(text, kind = "idle") {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind;
}

function preferVP8(transceiver) {
  // VP8 first: aiortc encodes it cheapest in software. The rest stay as fallbacks (H.264).
  const caps = window.RTCRtpReceiver?.getCapabilities?.("video");
  if (!caps || !transceiver.setCodecPreferences) return;
  const rank = (c) => ({"video/VP8": 0, "video/H264": 1}[c.mimeType] ?? 2);
  transceiver.setCodecPreferences([...caps.codecs].sort((a, b) => rank(a) - rank(b)));
}

function iceGathered(pc, timeoutMs = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => pc.iceGatheringState === "complete" && done();
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, timeoutMs); // send what we have: host candidates come first
  });
}

import {attachVoice, isVoice, micConstraints, resetVoice, showVoicePanel, voiceEvent} from "./voice.js";

async function start(event) {
  event?.preventDefault();
  if (state.pc) return;
  $("start").disabled = true;
  $("pipeline").disabled = true;
  const pipeline = $("pipeline").value;
  const width = Number(query.get("width") || 512), height = Number(query.get("height") || 512);
  const fps = Number(query.get("fps") || 30);
  const voice = (state.voice = isVoice(state.pipelines.get(pipeline))); // microphone only, the agent answers aloud
  showVoicePanel(voice);
  $("media").hidden = voice;
  try {
    setStatus(voice ? "Opening the microphone…" : "Opening the camera…");
    state.stream = await navigator.mediaDevices.getUserMedia(voice ? {video: false, audio: micConstraints()} : {
      video: {width: {ideal: width}, height: {ideal: height}, frameRate: {ideal: fps}},
      audio: $("mic").checked ? {echoCancellation: true, noiseSuppression: true} : false,
    });
    $("local").srcObject = state.stream;

    await negotiate(pipeline, voice, "/v1/webrtc/offer", changedParams());
    $("stop").disabled = false;
    $(voice ? "voice-stats" : "stats").hidden = false;
    state.statsTimer = setInterval(pollStats, 1000);
    watchOutputFrames();
  } catch (err) {
    stop(`Could not start: ${err.message || err}`, "error");
  }
}

// One peer connection for the camera stream: offer to `url` (the page's server, or the cluster node a
// drain moved the session to), answer applied. Used by start() and by a migrate event.
async function negotiate(pipeline, voice, url, params) {
  const pc = (state.pc = new RTCPeerConnection());
  const [video] = state.stream.getVideoTracks();
  if (video) {
    video.contentHint = "motion";
    preferVP8(pc.addTransceiver(video, {direction: "sendrecv", streams: [state.stream]}));
  }
  for (const audio of state.stream.getAudioTracks()) pc.addTransceiver(audio, {direction: "sendrecv"});
  const output = new MediaStream();
  pc.addEventListener("track", (ev) => {
    if (voice && ev.track.kind === "audio") return attachVoice(ev.track);
    output.addTrack(ev.track);
    $("output").srcObject = output;
  });
  pc.addEventListener("connectionstatechange", () => {
    if (state.pc !== pc) return; // an old connection a migration replaced
    if (pc.connectionState === "connected") setStatus(`Live · session ${state.sessionId} · ${pipeline}`, "live");
    if (pc.connectionState === "failed") stop("the connection failed", "error");
  });
  openControl(pc, pipeline, voice);

  setStatus("Connecting…");
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc);
  const res = await fetch(url, {
    method: "POST",
    headers: {"Content-Type": "application/json", ...operatorAuth()},
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: "offer", pipeline, params}),
  });
  const body = await res.json();
  if (!res.ok) {
    if (body.field) showParamError(body);
    throw new Error(`${res.status}: ${body.message || JSON.stringify(body.detail || body)}`);
  }
  state.sessionId = body.session_id;
  state.sessionSecret = body.session_secret; // this session's credential for /v1/sessions/{id}
  await pc.setRemoteDescription({type: body.type, sdp: body.sdp});
}

// A draining cluster node moves the session: {"event": "migrate", "offer": URL, "resume": credential}.
// Re-negotiate with that node (same camera stream); it resumes the session from its replayed history.
async function migrate(msg, pipeline, voice) {
  const old = state.pc;
  state.pc = null; // the old connection's close is not the end of the session
  old?.close();
  setStatus("Moving to another node…");
  try {
    await negotiate(pipeline, voice, msg.offer, {resume: msg.resume});
  } catch (err) {
    stop(`Could not move the session: ${err.message || err}`, "error");
  }
}

// On a server started with --token, open the page as /#token=... (a URL fragment never reaches the server).
function operatorAuth() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  return token ? {Authorization: `Bearer ${token}`} : {};
}

function openControl(pc, pipeline, voice) {
  const channel = (state.channel = pc.createDataChannel("control"));
  channel.addEventListener("open", () => channel.send(JSON.stringify({type: "ping", t: performance.now()})));
  channel.addEventListener("message", (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === "stats") state.serverStats = msg;
    else if (msg.type === "params") showParams(msg.params);
    else if (msg.type === "error") showParamError(msg);
    else if (msg.type === "pong") state.rtt = performance.now() - msg.t;
    else if (msg.type === "event" && msg.event === "migrate") return void migrate(msg, pipeline, voice);
    else if (msg.type === "event") voiceEvent(msg);
    renderStats();
  });
  channel.addEventListener("close", () => state.pc === pc && stop("The session ended.", "idle"));
}

function stop(message = "Stopped.", kind = "idle", {endSession = false} = {}) {
  // Closing the peer connection ends the session on the server (DTLS close); while the page unloads
  // that may not get out, so pagehide also asks for it explicitly.
  const {pc, stream, sessionId, sessionSecret} = state;
  state.pc = state.channel = state.stream = null;
  clearInterval(state.statsTimer);
  pc?.close();
  for (const track of stream?.getTracks() || []) track.stop();
  if (endSession && sessionId) {
    fetch(`/v1/sessions/${sessionId}`, {method: "DELETE", keepalive: true,
                                        headers: {Authorization: `Bearer ${sessionSecret}`}}).catch(() => {});
  }
  state.sessionId = state.sessionSecret = state.serverStats = state.prevReport = state.shown.last = null;
  $("local").srcObject = null;
  $("output").srcObject = null;
  resetVoice();
  $("stats").hidden = $("voice-stats").hidden = true;
  $("media").hidden = false;
  state.voice = false;
  $("stop").disabled = true;
  $("start").disabled = false;
  $("pipeline").disabled = false;
  setStatus(message, kind);
}

// --- stats overlay ------------------------------------------------------------------------------

function watchOutputFrames() {
  // Frames actually shown: requestVideoFrameCallback's presentedFrames counts every frame composited,
  // also those whose callback a busy page missed.
  const video = $("output");
  if (!video.requestVideoFrameCallback) return;
  const onFrame = (now, meta) => {
    state.shown.frames = meta.presentedFrames;
    if (state.pc) video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

async function pollStats() {
  const pc = state.pc;
  if (!pc) return;
  const report = await pc.getStats();
  const now = performance.now();
  const s = {};
  const prev = state.prevReport;
  report.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") {
      s.inFps = r.framesPerSecond; s.inSize = r.frameWidth && `${r.frameWidth}×${r.frameHeight}`;
      s.jitterMs = r.jitter !== undefined ? r.jitter * 1000 : undefined;
      s.lost = r.packetsLost; s.decoded = r.framesDecoded; s.dropped = r.framesDropped;
      s.jbMs = r.jitterBufferEmittedCount ? (1000 * r.jitterBufferDelay) / r.jitterBufferEmittedCount : undefined;
      const p = prev?.get(r.id);
      if (p) s.downKbps = (8 * (r.bytesReceived - p.bytesReceived)) / (r.timestamp - p.timestamp);
    } else if (r.type === "outbound-rtp" && r.kind === "video") {
      s.outFps = r.framesPerSecond; s.outSize = r.frameWidth && `${r.frameWidth}×${r.frameHeight}`;
      s.limit = r.qualityLimitationReason;
      const p = prev?.get(r.id);
      if (p) s.upKbps = (8 * (r.bytesSent - p.bytesSent)) / (r.timestamp - p.timestamp);
    } else if (r.type === "inbound-rtp" && r.kind === "audio") { // the agent's voice
      s.voiceLost = r.packetsLost; s.voiceJitterMs = r.jitter !== undefined ? r.jitter * 1000 : undefined;
      s.voiceJbMs = r.jitterBufferEmittedCount ? (1000 * r.jitterBufferDelay) / r.jitterBufferEmittedCount : undefined;
      s.voicePackets = r.packetsReceived; // the agent sends only while it speaks (no packets between replies)
      const p = prev?.get(r.id);
      if (p) s.voiceDownKbps = (8 * (r.bytesReceived - p.bytesReceived)) / (r.timestamp - p.timestamp);
    } else if (r.type === "outbound-rtp" && r.kind === "audio") { // the microphone
      const p = prev?.get(r.id);
      if (p) s.micUpKbps = (8 * (r.bytesSent - p.bytesSent)) / (r.timestamp - p.timestamp);
    } else if (r.type === "candidate-pair" && r.nominated && r.currentRoundTripTime !== undefined) {
      s.rttMs = r.currentRoundTripTime * 1000;
    }
  });
  const elapsed = (now - state.shown.since) / 1000;
  state.shown.fps = (state.shown.frames - (state.shown.last ?? state.shown.frames)) / elapsed;
  state.shown.last = state.shown.frames;
  state.shown.since = now;
  state.prevReport = report;
  state.clientStats = s;
  $("local-info").textContent = s.outSize ? `${s.outSize} · ${fmt(s.outFps)} fps sent` : "";
  $("output-info").textContent = s.inSize ? `${s.inSize} · ${fmt(state.shown.fps)} fps shown` : "";
  if (state.channel?.readyState === "open") state.channel.send(JSON.stringify({type: "ping", t: performance.now()}));
  renderStats();
}

const fmt = (v, digits = 1) => (v === undefined || v === null || Number.isNaN(v) ? "–" : Number(v).toFixed(digits));

function renderStats() {
  if (state.voice) return renderVoiceStats();
  const c = state.clientStats, srv = state.serverStats;
  const lines = [`${$("pipeline").value} · session ${state.sessionId ?? "–"}`];
  lines.push(`camera  ${c.outSize ?? "–"} @ ${fmt(c.outFps)} fps  ↑ ${fmt(c.upKbps, 0)} kb/s${c.limit && c.limit !== "none" ? ` (${c.limit}-limited)` : ""}`);
  lines.push(`output  ${c.inSize ?? "–"} @ ${fmt(c.inFps)} fps  ↓ ${fmt(c.downKbps, 0)} kb/s  shown ${fmt(state.shown.fps)} fps`);
  lines.push(`network rtt ${fmt(c.rttMs)} ms  jitter ${fmt(c.jitterMs)} ms  buffer ${fmt(c.jbMs, 0)} ms  lost ${c.lost ?? "–"}`);
  if (srv) {
    const lat = srv.latency_ms || {};
    lines.push(`server  in ${srv.frames_in}  out ${srv.frames_out}  dropped ${srv.frames_dropped}  late ${srv.deadline_misses}`);
    lines.push(`        latency p50 ${fmt(lat.p50)} ms  p95 ${fmt(lat.p95)} ms  control rtt ${fmt(state.rtt)} ms`);
    const slo = srv.slo;  // the scheduler's tier for this session and why (docs/serving.md)
    if (slo) lines.push(`tier    ${slo.level}/${slo.tiers - 1}: ${fmt(slo.fps)} fps${slo.width ? ` ${slo.width}×${slo.height}` : ""}${slo.level ? ` (${slo.knob} lowered${slo.spare_frames ? "; spare frames above it" : ""})` : ""} · ${slo.reason}`);
  }
  $("stats").textContent = lines.join("\n");
}

function renderVoiceStats() {
  // Audio figures for the voice agent (the video overlay's counters would all read zero).
  const c = state.clientStats, srv = state.serverStats;
  const lines = [`voice · session ${state.sessionId ?? "–"}`];
  lines.push(`microphone ↑ ${fmt(c.micUpKbps, 0)} kb/s   agent voice ↓ ${fmt(c.voiceDownKbps, 0)} kb/s`
    + `  packets ${c.voicePackets ?? "–"}  lost ${c.voiceLost ?? "–"}  jitter ${fmt(c.voiceJitterMs)} ms`
    + `  buffer ${fmt(c.voiceJbMs, 0)} ms`);
  lines.push(`network rtt ${fmt(c.rttMs)} ms  control rtt ${fmt(state.rtt)} ms`);
  if (srv) {
    lines.push(`server  audio in ${srv.audio_in}  out ${srv.audio_out}  late ${srv.deadline_misses}`
      + `  dropped ${srv.frames_dropped + (srv.dropped_overload || 0)}  flushed ${srv.flushed_out}  events ${srv.events}`);
  }
  $("voice-stats").textContent = lines.join("\n");
}

// --- wiring ---------------------------------------------------------------------------------------

$("controls").addEventListener("submit", start);
$("stop").addEventListener("click", () => stop());
$("pipeline").addEventListener("change", renderParams);
$("mic").checked = query.get("mic") === "1";
window.addEventListener("pagehide", () => state.pc && stop("Left the page.", "idle", {endSession: true}));

loadPipelines()
  .then(() => query.get("autostart") === "1" && start())
  .catch((err) => setStatus(`Could not reach the server: ${err.message || err}`, "error"));
