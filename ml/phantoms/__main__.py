"""``python -m ml.phantoms --out DIR --patients N --sites K --seed S [--resolution 2]``."""
from __future__ import annotations

import sys

from ml.phantoms.cli import main

if __name__ == "__main__":
    sys.exit(main())
