// sipserver browser demo: a call to the agent over its media-stream websocket, using the
// L16 16 kHz extension of Twilio's Media Streams protocol (see docs/websocket.md).
"use strict";

const RATE = 16000;
const wsPath = JSON.parse(document.body.dataset.wsPath);
const ui = {
  start: document.getElementById("start"),
  stop: document.getElementById("stop"),
  state: document.getElementById("state"),
  status: document.getElementById("status"),
  transcript: document.getElementById("transcript"),
};
let call = null;

function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function fromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

// audio/L16 is big-endian (RFC 2586).
function encodeL16(int16) {
  const bytes = new Uint8Array(int16.length * 2);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < int16.length; i++) view.setInt16(i * 2, int16[i], false);
  return bytes;
}

function decodeL16(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.byteLength >> 1);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(i * 2, false) / 32768;
  return out;
}

function line(kind, text, interim, p = null) {
  p = p || ui.transcript.querySelector(`p.${kind}.interim`);
  if (!p) {
    p = document.createElement("p");
    p.className = kind;
    ui.transcript.appendChild(p);
  }
  p.classList.toggle("interim", Boolean(interim));
  p.textContent = text;
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

function showState(state) {
  ui.state.textContent = state.replace("_", " ");
  ui.state.dataset.state = state;
}

function onServerEvent(body, session) {
  if (body.type === "state") showState(body.state);
  else if (body.type === "transcript") line("caller", body.text, !body.final);
  else if (body.type === "agent_text") {
    // The reply comes a sentence at a time: one paragraph per turn.
    const last = ui.transcript.lastElementChild;
    if (last && last.className === "agent") line("agent", `${last.textContent} ${body.text}`, false, last);
    else line("agent", body.text, false);
  } else if (body.type === "hangup") {
    session.hangupReason = body.reason;
  }
}

async function startCall() {
  ui.start.disabled = true;
  ui.status.textContent = "Connecting...";
  if (!navigator.mediaDevices) throw new Error("browsers allow the microphone only over https or on localhost");
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const context = new AudioContext({ sampleRate: RATE });
  await context.audioWorklet.addModule("/demo/static/capture-worklet.js");
  await context.audioWorklet.addModule("/demo/static/playback-worklet.js");
  const source = context.createMediaStreamSource(media);
  const capture = new AudioWorkletNode(context, "capture-processor");
  const playback = new AudioWorkletNode(context, "playback-processor");
  source.connect(capture);
  playback.connect(context.destination);

  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}${wsPath}`);
  const streamSid = "MZbrowser" + Math.random().toString(16).slice(2, 14);
  const marks = [];  // [name, sample position at which it was queued]
  let queuedSamples = 0;
  let chunk = 0;
  const session = { ws, media, context, received: 0, played: 0, hangupReason: null };
  call = window.sipserverDemo = session;  // for tests and curious developers

  ws.onopen = () => {
    ws.send(JSON.stringify({ event: "connected", protocol: "Call", version: "1.0.0" }));
    ws.send(JSON.stringify({
      event: "start",
      streamSid,
      start: {
        streamSid,
        tracks: ["inbound"],
        mediaFormat: { encoding: "audio/L16;rate=16000", sampleRate: RATE, channels: 1 },
        customParameters: { caller: "browser" },
      },
    }));
    ui.status.textContent = "Connected: speak to the agent.";
    ui.stop.disabled = false;
    showState("listening");
  };
  capture.port.onmessage = (event) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    chunk += 1;
    ws.send(JSON.stringify({
      event: "media",
      streamSid,
      media: { track: "inbound", chunk: String(chunk), timestamp: String((chunk - 1) * 20),
               payload: toBase64(encodeL16(event.data)) },
    }));
  };
  playback.port.onmessage = (event) => {
    session.played = event.data.played;
    // The worklet reports until the audio context has closed, which is after a hang-up has
    // closed the socket: marks go out only while it is open.
    if (ws.readyState !== WebSocket.OPEN) return;
    while (marks.length && marks[0][1] <= event.data.played) {
      ws.send(JSON.stringify({ event: "mark", streamSid, mark: { name: marks.shift()[0] } }));
    }
  };
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.event === "media") {
      const samples = decodeL16(fromBase64(msg.media.payload));
      session.received += samples.length;
      queuedSamples += samples.length;
      playback.port.postMessage(samples, [samples.buffer]);
    } else if (msg.event === "mark") {
      marks.push([msg.mark.name, queuedSamples]);
    } else if (msg.event === "clear") {
      playback.port.postMessage("clear");  // counts the cleared audio as played
      while (marks.length) {  // like Twilio: cleared marks come back at once
        ws.send(JSON.stringify({ event: "mark", streamSid, mark: { name: marks.shift()[0] } }));
      }
    } else if (msg.event === "sipserver") {
      onServerEvent(msg.sipserver, session);
    }
  };
  ws.onclose = (event) => {
    if (session.hangupReason) endCall(`The agent ended the call (${session.hangupReason}).`);
    else if (!ui.stop.disabled) endCall(`Call ended${event.reason ? ": " + event.reason : ""}.`);
    else endCall(`Could not connect to the agent (${event.code}).`);
  };
}

function endCall(message) {
  if (!call) return;
  const { ws, media, context } = call;
  call = null;
  ui.status.textContent = message;
  ws.onclose = ws.onmessage = null;
  if (ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ event: "stop", stop: {} }));
    ws.close(1000, "hung up");
  }
  media.getTracks().forEach((track) => track.stop());
  context.close();
  showState("idle");
  ui.start.disabled = false;
  ui.stop.disabled = true;
}

ui.start.addEventListener("click", () => startCall().catch((err) => {
  ui.status.textContent = `Could not start: ${err.message}`;
  ui.start.disabled = false;
}));
ui.stop.addEventListener("click", () => endCall("You hung up."));
