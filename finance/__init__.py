"""Finance: revenue recognition under ASC 606 on the projection, periods, exports
(finance/README.md). Reads the projection (`ledger_entries`) and the catalog; never the engine's
hot path."""
