"""`python -m ledger.embedded`: the engine process (see `ledger.embedded.process`)."""

import sys

from ledger.embedded.process import main

sys.exit(main())
