"""``python -m duotpu.cli``."""

import sys

from duotpu.cli.main import main

sys.exit(main())
