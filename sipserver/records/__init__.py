"""Call records ([5/7]): what every call leaves behind and who is told about it.

The store of call records and recordings, the API and pages of the call history, and the
webhooks (:mod:`sipserver.records.webhooks`: signed POSTs of a record from a persistent queue).
An ingress-layer package: it reads the configuration and the record vocabulary of
:mod:`sipserver.pipeline.call_record`, never another ingress; ``server.py`` wires it up.
"""
