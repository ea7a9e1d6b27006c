"""``python -m transferd``: the same as the ``transferd`` command."""

import sys

from transferd.cli import main

sys.exit(main())
