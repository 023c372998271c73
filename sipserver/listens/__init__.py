"""AI Listens: live calls forked to sipserver, transcribed per track, with knowledge-base
suggestions streamed to a dashboard for the human agent or a supervisor.

- :mod:`.fork`: the Twilio webhook and fork websocket, and the receive-only SIP session;
- :mod:`.transcriber`: one VAD + STT stream per track of a monitored call;
- :mod:`.suggestions`: retrieval, then an LLM or the best passage, rate-limited, de-duplicated;
- :mod:`.monitor`: the monitored calls, their bounded history and live subscribers;
- :mod:`.dashboard`: login, roles, pages and the Server-Sent Events streams;
- :mod:`.passwords`: password hashes of the dashboard users.
"""
