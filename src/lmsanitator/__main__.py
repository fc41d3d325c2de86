"""``python -m lmsanitator``: the same as the ``lmsanitator`` command."""

import sys

from lmsanitator.cli import main

sys.exit(main())
