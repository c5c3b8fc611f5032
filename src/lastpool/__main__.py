"""``python -m lastpool``: the same as the ``lastpool`` command."""

import sys

from lastpool.cli import main

sys.exit(main())
