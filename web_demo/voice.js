// Voice UI for the demo page: live transcript (user and agent, partial and final), what the agent is
// thinking while you speak, a per-turn latency overlay, and a WebAudio meter of the agent's voice.
// app.js calls: isVoice(info) to pick the mic-only path, attachVoice(track) for the agent's audio,
// voiceEvent(msg) for each `event` message of the control channel, resetVoice() on stop.

const $ = (id) => document.getElementById(id);

// Read by the browser test: energy of the agent's audio as the page receives it (WebAudio).
export const voiceStats = (window.voiceStats = {peakRms: 0, loudFrames: 0, turns: [], events: 0});
let meterTimer = null, audioCtx = null;

export function isVoice(info) {
  return !!info && info.inputs.length === 1 && info.inputs[0] === "audio";
}

export function micConstraints() {
  // Echo cancellation matters most: without it the agent hears itself (the server then ignores
  // input while it speaks, see client_aec in docs/voice.md).
  return {echoCancellation: true, noiseSuppression: true, autoGainControl: true};
}

export function showVoicePanel(show) {
  $("voice-panel").hidden = !show;
}

export function attachVoice(track) {
  const stream = new MediaStream([track]);
  $("agent-audio").srcObject = stream;
  $("agent-audio").play().catch(() => {});
  audioCtx = audioCtx || new AudioContext();
  audioCtx.resume().catch(() => {});
  const analyser = audioCtx.createAnalyser();
  analyser.fftSize = 1024;
  audioCtx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  clearInterval(meterTimer);
  meterTimer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    const rms = Math.sqrt(sum / buf.length);
    voiceStats.peakRms = Math.max(voiceStats.peakRms, rms);
    if (rms > 0.01) voiceStats.loudFrames += 1;
    $("agent-level").value = Math.min(1, rms * 5);
  }, 50);
}

function line(role, final) {
  // The current line of `role`: a partial line is rewritten until its final arrives.
  const log = $("transcript");
  let el = log.querySelector(`li.${role}.partial`);
  if (!el) {
    el = document.createElement("li");
    el.className = `${role} partial`;
    log.appendChild(el);
  }
  if (final) el.classList.remove("partial");
  return el;
}

export function voiceEvent(msg) {
  voiceStats.events += 1;
  switch (msg.event) {
    case "transcript": {
      const el = line(msg.role, msg.final);
      el.textContent = `${msg.role === "user" ? "you" : "agent"}: ${msg.text}`;
      $("transcript").scrollTop = $("transcript").scrollHeight;
      break;
    }
    case "thinking":
      $("thinking").textContent = `thinking (${msg.stage}): “${msg.text}”`;
      break;
    case "turn":
      voiceStats.turns.push(msg.latency_ms);
      $("latency").textContent = `last turn: end of speech → first agent audio ${msg.latency_ms.toFixed(0)} ms`
        + ` (${msg.end_reason}${msg.speculative_hit ? ", answer prepared while you spoke" : ""})`
        + ` · median ${median(voiceStats.turns).toFixed(0)} ms over ${voiceStats.turns.length} turn(s)`;
      break;
    case "barge_in":
      line("agent", true).textContent += " [interrupted]";
      break;
    case "error":
      $("thinking").textContent = `error: ${msg.code}: ${msg.message}`;
      break;
    default:
      break;
  }
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
}

export function resetVoice() {
  clearInterval(meterTimer);
  $("agent-audio").srcObject = null;
}
