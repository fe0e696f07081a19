"""`python -m sal_hf` runs the `sal-hf` command line (see `sal_hf.cli`)."""

import sys

from .cli import main


sys.exit(main())
