"""The operator console: the configuration file edited one object at a time, and its JSON API.

:mod:`.document` reads and writes the file (round-trip YAML, validation, atomic save),
:mod:`.masking` decides what a client sees and what its body means (secrets, ``${VAR}``),
:mod:`.audit` records every save, :mod:`.api` serves it all behind the dashboard login
(docs/console.md).
"""
