"""A pjsua2 user agent that places one call, for integration tests (run as a subprocess).

    python tests/integration/pjsua2_caller.py --uri sip:+1500@127.0.0.1:5080 \
        --play in.wav --record out.wav --seconds 4 --dtmf '#'

Places a call to ``--uri`` (offer PCMU only), plays ``--play`` (a mono 16-bit WAV, once) into
the call as soon as media is up, records what it receives to ``--record`` (8 kHz mono WAV), and
after ``--seconds`` sends ``--dtmf`` as RFC 4733 telephone-events. With ``--user/--password``
it answers 401/407 digest challenges. Then it waits up to
``--wait-bye`` seconds for the far end to hang up; if it does not, the caller hangs up itself.

``--transport tls`` signals over TLS (``--tls-ca`` verifies the server's certificate,
``--tls-cert``/``--tls-key`` present a client certificate for mutual TLS); ``--srtp`` is the
caller's SDES-SRTP use: ``off`` offers RTP/AVP, ``optional`` RTP/AVP with ``a=crypto``,
``required`` RTP/SAVP. ``--header 'NAME: VALUE'`` (repeatable) adds a header to the INVITE.

Prints one JSON line: ``{"ended_by": "remote"|"local"|"never-connected", "status": int,
"srtp": str|None, ...}`` (``srtp``: the crypto suite of the SDP answer, e.g.
``AES_256_CM_HMAC_SHA1_80``; None: plain RTP). Exit status 0 unless pjsua2 failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import pjsua2 as pj  # type: ignore[import-untyped]

RATE = 8000
TRANSPORTS = {
    "udp": pj.PJSIP_TRANSPORT_UDP,
    "tcp": pj.PJSIP_TRANSPORT_TCP,
    "tls": pj.PJSIP_TRANSPORT_TLS,
}
SRTP_USE = {
    "off": pj.PJMEDIA_SRTP_DISABLED,
    "optional": pj.PJMEDIA_SRTP_OPTIONAL,
    "required": pj.PJMEDIA_SRTP_MANDATORY,
}


class CallerCall(pj.Call):  # type: ignore[misc]
    def __init__(self, acc: pj.Account, args: argparse.Namespace) -> None:
        super().__init__(acc)
        self.args = args
        self.player: pj.AudioMediaPlayer | None = None
        self.recorder: pj.AudioMediaRecorder | None = None
        self.media_at: float | None = None
        self.answer_sdp = ""
        self.disconnected = False
        self.status = 0
        self.reason = ""

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        ci = self.getInfo()
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True
            self.status = int(ci.lastStatusCode)
            self.reason = str(ci.lastReason)

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        # Keep the SDP answer of the INVITE's 2xx (the SRTP crypto the far end chose).
        if prm.e.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        state = prm.e.body.tsxState
        if state.type != pj.PJSIP_EVENT_RX_MSG or state.tsx.method != "INVITE":
            return
        if state.tsx.role == pj.PJSIP_ROLE_UAC and 200 <= int(state.tsx.statusCode) < 300:
            whole = str(state.src.rdata.wholeMsg)
            self.answer_sdp = whole.partition("\r\n\r\n")[2]

    def crypto(self) -> str | None:
        """The SRTP suite of the answer's ``a=crypto`` line (RFC 4568 §9.1), None without."""
        for line in self.answer_sdp.splitlines():
            if line.startswith("a=crypto:"):
                return line.split()[1]
        return None

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        if self.media_at is not None:
            return
        ci = self.getInfo()
        for mi in ci.media:
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                audio = self.getAudioMedia(mi.index)
                self.recorder = pj.AudioMediaRecorder()
                self.recorder.createRecorder(self.args.record)
                audio.startTransmit(self.recorder)
                self.player = pj.AudioMediaPlayer()
                self.player.createPlayer(self.args.play, pj.PJMEDIA_FILE_NO_LOOP)
                self.player.startTransmit(audio)
                self.media_at = time.monotonic()
                return


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--uri", required=True)
    p.add_argument("--play", required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--dtmf", default="")
    p.add_argument("--wait-bye", type=float, default=5.0)
    p.add_argument("--user", default="", help="digest user for 401/407 challenges")
    p.add_argument("--password", default="")
    p.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp")
    p.add_argument("--srtp", choices=tuple(SRTP_USE), default="off")
    p.add_argument("--tls-ca", default="", help="CA bundle that signed the server certificate")
    p.add_argument("--tls-cert", default="", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", default="")
    p.add_argument("--log-level", type=int, default=1, help="pjsip log level on stderr")
    p.add_argument("--header", action="append", default=[], help="NAME: VALUE added to the INVITE")
    args = p.parse_args()

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = args.log_level
    cfg.logConfig.consoleLevel = args.log_level
    cfg.medConfig.clockRate = RATE
    cfg.medConfig.sndClockRate = RATE
    cfg.medConfig.ecTailLen = 0
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.boundAddress = "127.0.0.1"
    tcfg.port = 0
    if args.transport == "tls":
        tcfg.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
        tcfg.tlsConfig.CaListFile = args.tls_ca
        tcfg.tlsConfig.verifyServer = bool(args.tls_ca)
        tcfg.tlsConfig.certFile = args.tls_cert
        tcfg.tlsConfig.privKeyFile = args.tls_key
    tid = ep.transportCreate(TRANSPORTS[args.transport], tcfg)
    ep.audDevManager().setNullDev()
    for codec in ep.codecEnum2():
        ep.codecSetPriority(codec.codecId, 255 if codec.codecId == "PCMU/8000/1" else 0)
    ep.libStart()
    acfg = pj.AccountConfig()
    # A sips: target needs a sips: identity (pjsua refuses with 480 SIPS Required otherwise).
    acfg.idUri = "sips:caller@127.0.0.1" if args.uri.startswith("sips:") else "sip:caller@127.0.0.1"
    acfg.sipConfig.transportId = tid
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    acfg.mediaConfig.srtpUse = SRTP_USE[args.srtp]
    acfg.mediaConfig.srtpSecureSignaling = 0  # also over UDP, to test the edge's policy
    acfg.mediaConfig.srtpOpt.keyings.clear()
    acfg.mediaConfig.srtpOpt.keyings.append(pj.PJMEDIA_SRTP_KEYING_SDES)
    if args.user:
        acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", args.user, 0, args.password))
    acc = pj.Account()
    acc.create(acfg)

    call = CallerCall(acc, args)
    op = pj.CallOpParam(True)
    for header in args.header:
        name, _, value = header.partition(":")
        extra = pj.SipHeader()
        extra.hName = name.strip()
        extra.hValue = value.strip()
        op.txOption.headers.append(extra)
    call.makeCall(args.uri, op)
    result: dict[str, object] = {}
    deadline = time.monotonic() + 15
    while not call.disconnected and call.media_at is None and time.monotonic() < deadline:
        ep.libHandleEvents(10)
    ended_by = "never-connected"
    if call.media_at is not None and not call.disconnected:
        until = call.media_at + args.seconds
        while not call.disconnected and time.monotonic() < until:
            ep.libHandleEvents(10)
        if args.dtmf and not call.disconnected:
            prm = pj.CallSendDtmfParam()
            prm.digits = args.dtmf
            prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
            prm.duration = 160
            call.sendDtmf(prm)
        until = time.monotonic() + args.wait_bye
        while not call.disconnected and time.monotonic() < until:
            ep.libHandleEvents(10)
        ended_by = "remote" if call.disconnected else "local"
        if not call.disconnected:
            call.hangup(pj.CallOpParam())
            until = time.monotonic() + 2
            while not call.disconnected and time.monotonic() < until:
                ep.libHandleEvents(10)
    result = {
        "ended_by": ended_by,
        "status": call.status,
        "reason": call.reason,
        "srtp": call.crypto(),
    }
    # drop every pjsua2 object before libDestroy (asserts otherwise)
    call.player = None
    call.recorder = None  # closes the WAV (header sizes written)
    del call
    acc.shutdown()
    del acc
    gc.collect()
    ep.libDestroy()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
