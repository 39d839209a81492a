"""``python -m nextscale ...`` (also what ``torchrun -m nextscale train ...`` runs)."""

import sys

from nextscale.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
