"""The engine boundary: TigerBeetle (a real cluster or the embedded engine), ids, codes, limits.

Code above this package talks to `ledger.open_ledger(...)` and TigerBeetle's own types
(re-exported by `ledger.types`); it cannot tell which engine answers.
"""
