"""``python -m training METHOD ...``: see ``training.cli``."""

import sys

from training.cli import main

sys.exit(main())
