"""grants layer (see ../shared/DESIGN.md)."""
