"""The stress suite (issue [2/7]): each finding of the attack run reproduced at a small scale.

Every test here starts a real server process and pushes one door past its limit (websocket
calls, TCP connections, logins, registrations under kill -9 ...), then asserts the server kept
answering and lost nothing. They run in CI, each bounded to well under a minute on 2 cores;
`bench/soak.py` is the long, mixed version for a person to run.
"""

from __future__ import annotations

from tests.integration.conftest import server, server_factory  # noqa: F401  (pytest fixtures)
