"""``python -m brook_cli``: the same as the ``brook`` command, under this interpreter."""

import sys

from .main import main

sys.exit(main())
