"""Call records ([5/7]): what every call leaves behind, kept, served and posted.

- ``store.py``: the SQLite store of records and their events (batched writes in a thread).
- ``book.py``: the main process's collector: signalling facts and session events -> records.
- ``webhooks.py``: signed end-of-call (and started / per-turn) webhooks from a persistent queue.
- ``api.py`` / ``pages.py``: the calls API and the call history pages.
- ``retention.py``: deletes records (and recordings) past the retention age and size cap.

The record's vocabulary lives in :mod:`sipserver.pipeline.call_record` (the session side
produces the events). An ingress-layer package: it reads the configuration and the record
vocabulary, never another ingress; ``server.py`` wires it up.
"""
