"""`python -m qwen2vl.cli` runs the command line."""

import sys

from . import main

sys.exit(main())
