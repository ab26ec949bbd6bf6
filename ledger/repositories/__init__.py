"""Repositories: the only modules with SQL. One module per aggregate of the catalog.

Invariants:
- Every function is a plain `async def f(conn, ...)` on a `psycopg.AsyncConnection` (tuple
  rows). The caller owns the transaction: a repository never commits, rolls back or opens a
  connection, so a service can put several repository calls in one unit of work.
- Above this package, ids are ints: a u128 id is a Python int, stored as a `uuid` (the integer's
  128 bits, `uuid.UUID(int=n)`); a credit type id is the TigerBeetle ledger number. Amounts are
  ints, stored as `u128` (numeric(39,0), 0 <= n < 2^128). The conversion happens here and only
  here, in `_rows`.
- Rows come back as frozen `msgspec.Struct`s, timestamps as aware UTC datetimes.
- Lists are bounded: a call that takes many ids or returns many rows has a limit, below.
"""
