// Agent audio playback: a bounded queue of float samples; "clear" empties it at once (barge-in).
// Every ~100 ms it reports how many samples are done with (played, cleared or dropped), so the
// page can echo marks.
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunks = [];
    this.offset = 0;
    this.queued = 0;
    this.played = 0;
    this.sinceReport = 0;
    this.maxQueued = sampleRate * 5;
    this.port.onmessage = (event) => {
      if (event.data === "clear") {
        this.played += this.queued;
        this.chunks = [];
        this.offset = 0;
        this.queued = 0;
        return;
      }
      this.chunks.push(event.data);
      this.queued += event.data.length;
      while (this.queued > this.maxQueued && this.chunks.length > 1) {
        const dropped = this.chunks.shift().length - this.offset;  // far behind: drop the oldest
        this.offset = 0;
        this.queued -= dropped;
        this.played += dropped;
      }
    };
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    while (i < out.length && this.chunks.length) {
      const chunk = this.chunks[0];
      const n = Math.min(out.length - i, chunk.length - this.offset);
      out.set(chunk.subarray(this.offset, this.offset + n), i);
      i += n;
      this.offset += n;
      this.queued -= n;
      this.played += n;
      if (this.offset === chunk.length) {
        this.chunks.shift();
        this.offset = 0;
      }
    }
    out.fill(0, i);
    this.sinceReport += out.length;
    if (this.sinceReport >= sampleRate / 10) {
      this.sinceReport = 0;
      this.port.postMessage({ played: this.played, queued: this.queued });
    }
    return true;
  }
}
registerProcessor("playback-processor", PlaybackProcessor);
