// Record button of the demo page: PATCH /v1/sessions/{id}/recording {"record": true|false}, then a
// link to GET the finished file. Kept apart from app.js: it follows the session through the
// page's state (window.streamserve) and the Stop button, which app.js enables while a session runs.

const recordButton = document.getElementById("record");
const recordLink = document.getElementById("recording-link");
const recordInfo = document.getElementById("recording-info");
let recordingSession = null;

function recordHeaders() {
  const secret = window.streamserve?.sessionSecret; // this session's credential, when the server issues one
  return {"Content-Type": "application/json", ...(secret ? {Authorization: `Bearer ${secret}`} : {})};
}

async function setRecording(record) {
  const sessionId = window.streamserve?.sessionId;
  if (!sessionId) return;
  recordButton.disabled = true;
  try {
    const res = await fetch(`/v1/sessions/${sessionId}/recording`, {
      method: "PATCH", headers: recordHeaders(), body: JSON.stringify({record, format: "mp4", audio: false}),
    });
    const body = await res.json();
    if (!res.ok) throw new Error(`${res.status} ${body.error}: ${body.message}`);
    recordingSession = body.recording ? sessionId : null;
    recordButton.textContent = body.recording ? "Stop recording" : "Record";
    recordButton.dataset.recording = body.recording ? "1" : "";
    recordInfo.textContent = body.recording ? "● recording" : `${body.frames} frames, ${Math.round(body.bytes / 1024)} KiB`;
    if (!body.recording) showLink(sessionId);
  } catch (err) {
    recordInfo.textContent = `recording refused: ${err.message || err}`;
  } finally {
    recordButton.disabled = !window.streamserve?.sessionId || !!window.streamserve?.voice;
  }
}

function showLink(sessionId) {
  const secret = window.streamserve?.sessionSecret; // a link cannot send a header: the secret rides in the URL
  recordLink.href = `/v1/sessions/${sessionId}/recording` + (secret ? `?token=${encodeURIComponent(secret)}` : "");
  recordLink.download = `streamserve-${sessionId}.mp4`;
  recordLink.hidden = false;
}

recordButton.addEventListener("click", () => setRecording(!recordButton.dataset.recording));

// The Stop button is enabled exactly while a session runs: follow it.
new MutationObserver(() => {
  const live = !document.getElementById("stop").disabled;
  const voice = !!window.streamserve?.voice; // recordings hold video; the voice agent has none
  recordButton.disabled = !live || voice;
  recordButton.title = voice ? "recordings hold the session's video; the voice pipeline has none"
    : "record the output to an MP4 on the server";
  if (!live && recordingSession) {
    // The session ended: the server finalised the file; offer it.
    showLink(recordingSession);
    recordInfo.textContent = "recording finished";
    recordingSession = null;
  }
  if (!live) {
    recordButton.textContent = "Record";
    recordButton.dataset.recording = "";
  }
}).observe(document.getElementById("stop"), {attributes: true, attributeFilter: ["disabled"]});
