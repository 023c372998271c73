"""Media workers and the frame link between them and the sessions.

A media worker (pjsua2 or native) is a SIP user agent on loopback that turns each call into
20 ms PCM frames; :mod:`sipserver.rtp.framelink` carries those frames to the sessions of the
main process (the sessions queue their outbound audio in :mod:`sipserver.media.playout`).

Submodules are imported explicitly (``from sipserver.rtp.framelink import FrameLink``), so importing
this package never loads pjsua2.
"""
