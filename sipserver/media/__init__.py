"""Audio building blocks every ingress shares: the 20 ms frame (:mod:`~sipserver.media.frames`),
G.711/L16 codecs (:mod:`~sipserver.media.codecs`), resampling (:mod:`~sipserver.media.resample`),
the inbound jitter buffer (:mod:`~sipserver.media.jitter`), a call's outbound frame queue
(:mod:`~sipserver.media.playout`) and call recording (:mod:`~sipserver.media.recording`).

Pure value code: no I/O, no clock, no asyncio. It sits below :mod:`sipserver.pipeline` in the
import order, so sessions (which own their outbound queue), media workers and the websocket
gateway all use it; it imports nothing else from sipserver. The one exception is recording:
an encoder thread writing files, with :mod:`sipserver.data_dir` for their modes and
:mod:`sipserver.observability` for its log lines and counters.
"""
