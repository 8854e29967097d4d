"""`python -m seqlab` is the `seqlab` command."""

import sys

from seqlab.cli.main import main

sys.exit(main())
