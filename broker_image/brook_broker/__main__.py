"""``python -m brook_broker``: the same as the ``brook-broker`` command."""

import sys

from .main import main

sys.exit(main())
