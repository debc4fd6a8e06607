"""``python -m ckptlab``: see :mod:`ckptlab.cli`."""

import sys

from .cli import main

sys.exit(main())
