"""`python -m latentbridge ...` is the `latentbridge` command."""

import sys

from .cli import main

sys.exit(main())
