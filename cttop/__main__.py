"""`python -m cttop`."""

import sys

from cttop.cli import main

sys.exit(main())
