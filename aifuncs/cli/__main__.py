"""`python -m aifuncs.cli`: the same as the `aifuncs` command."""

import sys

from aifuncs.cli import main

sys.exit(main())
