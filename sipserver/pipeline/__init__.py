"""Transport-agnostic realtime voice pipeline.

A :class:`~sipserver.pipeline.session.CallSession` consumes and produces 20 ms PCM frames; SIP
(through the frame link), websockets and tests drive it the same way, on a
:class:`~sipserver.pipeline.clock.Clock` that tests replace with a virtual one. Nothing here
imports :mod:`sipserver.rtp` or :mod:`sipserver.gateway`.
"""
