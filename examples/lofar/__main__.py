"""``python -m examples.lofar``: run the pipeline (see ``examples.lofar.pipeline``)."""

import sys

from examples.lofar.pipeline import main

sys.exit(main())
