"""``python -m sark_native.policyd``: see :mod:`sark_native.policyd`."""

import sys

from . import main

sys.exit(main())
