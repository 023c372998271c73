"""``python -m sipserver``: the same as the ``sipserver`` command."""

import sys

from sipserver.cli import main

sys.exit(main())
