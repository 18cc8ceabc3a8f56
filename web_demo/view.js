// WHEP player for /view/{stream}: no controls, no text, reconnects on its own.
// State for tests and debugging: window.streamserveView (and data-state on <body>).
"use strict";

(function () {
  const video = document.getElementById("output");
  const query = new URLSearchParams(location.search);
  const parts = location.pathname.split("/").filter(Boolean); // ["view", "<stream>"]
  const stream = decodeURIComponent(parts[parts.length - 1] || "");
  const wantAudio = query.get("audio") === "1";
  // A viewer token (servers started with --viewer-token) comes in the URL: /view/NAME?token=...
  const auth = query.get("token") ? { Authorization: "Bearer " + query.get("token") } : {};
  if (query.get("fit") === "cover") video.style.objectFit = "cover";
  if (wantAudio) video.muted = false;

  const view = {
    stream: stream,
    state: "idle",       // idle | connecting | waiting (stream not live) | playing | retrying | refused
    resource: null,      // the WHEP resource URL while connected
    attempts: 0,
    lastError: null,
    peer: function () { return pc; },
    framesDecoded: function () {
      const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
      return q ? q.totalVideoFrames : 0;
    },
  };
  window.streamserveView = view;

  let pc = null;
  let retryTimer = null;
  let watchTimer = null;
  let sessionId = null; // the stream's session when this viewer connected

  function setState(state) {
    view.state = state;
    document.body.dataset.state = state;
    if (state !== "refused") notice.hidden = true;
  }

  // The page shows nothing but the video, except when the server refuses it (401/403 auth, 503 at a
  // limit): then a notice says why, instead of a silent black or transparent source.
  const notice = document.getElementById("notice");
  async function refused(reply) {
    let detail = "";
    try {
      const body = await reply.json();
      detail = (body.error ? body.error + ": " : "") + (body.message || "");
    } catch (e) { /* not JSON */ }
    const why = reply.status === 503 ? "the server is at its limit" : "the server refused this viewer (authorization)";
    notice.textContent = "streamserve: " + why + " (HTTP " + reply.status + (detail ? ", " + detail : "") +
      "). Retrying every 5 s.";
    notice.hidden = false;
    view.lastError = notice.textContent;
    setState("refused");
  }

  function preferVp8(transceiver) {
    // OBS's Linux browser source has no H.264: ask for VP8 first.
    if (!transceiver.setCodecPreferences || !window.RTCRtpReceiver || !RTCRtpReceiver.getCapabilities) return;
    const caps = RTCRtpReceiver.getCapabilities("video");
    if (!caps) return;
    const rank = (c) => (/vp8/i.test(c.mimeType) ? 0 : /rtx|red|ulpfec/i.test(c.mimeType) ? 2 : 1);
    transceiver.setCodecPreferences(caps.codecs.slice().sort((a, b) => rank(a) - rank(b)));
  }

  function gathered(peer, ms) {
    if (peer.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms); // send what we have: the server learns the rest from checks
      peer.addEventListener("icegatheringstatechange", () => {
        if (peer.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      });
    });
  }

  async function streamSession() {
    // The live session of the stream, or null: browsers take 5-30 s to notice a peer that went away,
    // so the page also asks the server every 2 s whether the stream it plays is still the live one.
    try {
      const reply = await fetch("/v1/streams/" + encodeURIComponent(stream), { cache: "no-store", headers: auth });
      return reply.ok ? (await reply.json()).session_id : null;
    } catch (e) {
      return null;
    }
  }

  function watch(peer) {
    clearInterval(watchTimer);
    watchTimer = setInterval(async () => {
      if (pc !== peer) { clearInterval(watchTimer); return; }
      const current = await streamSession();
      if (pc === peer && current !== sessionId) {
        clearInterval(watchTimer);
        setState(current === null ? "waiting" : "retrying");
        retry(current === null ? 1000 : 0);
      }
    }, 2000);
  }

  async function teardown() {
    clearInterval(watchTimer);
    const resource = view.resource;
    view.resource = null;
    if (pc) { pc.close(); pc = null; }
    if (resource) {
      try { await fetch(resource, { method: "DELETE", keepalive: true }); } catch (e) { /* gone already */ }
    }
  }

  function retry(delayMs) {
    if (retryTimer) return;
    retryTimer = setTimeout(() => { retryTimer = null; connect(); }, delayMs);
  }

  async function connect() {
    await teardown();
    view.attempts += 1;
    setState("connecting");
    const peer = new RTCPeerConnection({ iceServers: [] });
    pc = peer;
    preferVp8(peer.addTransceiver("video", { direction: "recvonly" }));
    if (wantAudio) peer.addTransceiver("audio", { direction: "recvonly" });
    const media = new MediaStream();
    peer.ontrack = (event) => {
      media.addTrack(event.track);
      video.srcObject = media;
      event.track.onended = () => { if (pc === peer) { setState("retrying"); retry(1000); } };
      video.play().catch(() => { /* autoplay policy: muted video plays anyway */ });
    };
    peer.onconnectionstatechange = () => {
      if (pc !== peer) return;
      if (peer.connectionState === "connected") setState("playing");
      if (["failed", "closed", "disconnected"].includes(peer.connectionState)) {
        setState("retrying");
        retry(1000);
      }
    };
    try {
      await peer.setLocalDescription(await peer.createOffer());
      await gathered(peer, 2000);
      const reply = await fetch("/whep/" + encodeURIComponent(stream), {
        method: "POST",
        headers: Object.assign({ "Content-Type": "application/sdp" }, auth),
        body: peer.localDescription.sdp,
      });
      if (pc !== peer) return;
      if (reply.status === 404) { // the stream is not live (yet): keep waiting for it
        peer.close(); pc = null;
        setState("waiting");
        retry(1000);
        return;
      }
      if ([401, 403, 503].includes(reply.status)) {
        peer.close(); pc = null;
        await refused(reply);
        retry(5000);
        return;
      }
      if (reply.status !== 201) throw new Error("WHEP answered " + reply.status + ": " + (await reply.text()));
      const location = reply.headers.get("Location");
      view.resource = location ? new URL(location, window.location.href).href : null;
      await peer.setRemoteDescription({ type: "answer", sdp: await reply.text() });
      sessionId = await streamSession();
      watch(peer);
    } catch (err) {
      view.lastError = String(err);
      if (pc === peer) { setState("retrying"); retry(2000); }
    }
  }

  window.addEventListener("pagehide", () => { teardown(); });
  connect();
})();
