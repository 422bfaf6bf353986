"""Entry point of ``python -m mambast``."""

import sys

from .cli import main

sys.exit(main())
