"""Model providers of the voice pipeline (protocols in :mod:`.base`)."""
