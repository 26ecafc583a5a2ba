"""``python -m mambacontrol`` runs the command-line interface."""

import sys

from mambacontrol.cli.main import main

sys.exit(main())
