"""``python -m aensae`` runs the command line."""

import sys

from aensae.cli import main

sys.exit(main())
