"""A stand-in media worker for the pool's own tests: it speaks the frame link (HELLO with the
capacity given on the command line) and does nothing else. The real worker is
sipserver.rtp.pjsua2_worker; this one lets the supervision logic be tested without SIP."""

from __future__ import annotations

import argparse
import asyncio
import os

from sipserver.rtp.framelink import Hello, open_link


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--link", required=True)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--capacity", type=int, default=4)
    args, _ = p.parse_known_args()
    link = await open_link(args.link)
    link.send(
        Hello(
            worker_id=args.worker_id,
            pid=os.getpid(),
            kind="test",
            sip_host="127.0.0.1",
            sip_port=5999,
            capacity=args.capacity,
            sample_rate=8000,
        )
    )
    async for _ in link.records():
        pass


if __name__ == "__main__":
    asyncio.run(main())
