"""`python -m cli ...`: the `credit-ledger` command, as the server starts its helpers."""

from cli import main

main()
