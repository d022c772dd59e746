"""``python -m bbvae``: the ``bbvae`` command line (see :mod:`bbvae.cli`)."""

import sys

from bbvae.cli import main

sys.exit(main())
