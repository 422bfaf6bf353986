"""Entry point of ``python -m mambast``."""

import sys

from .commands import main

sys.exit(main())
