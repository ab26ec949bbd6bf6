"""wallets layer (see ../shared/DESIGN.md)."""
