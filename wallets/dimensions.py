"""Dimension sets made durable before the spends that carry them.

A spend's dimensions (feature, model, session, user, ...) are written once per distinct set to
Postgres (`dimension_sets`), keyed by a hash of the set, and the spend's chain carries that id
(its check leg's `user_data_128`, ledger/README.md "Dimensions"). The engine therefore keeps,
with every acknowledged spend, the id of a row that was committed before the spend was sent: no
process can die in a way that loses a spend's dimensions.

The hot path waits on Postgres only for a set this process has not written or seen before: the
ids it knows are kept (at most `KNOWN_SETS_MAX`, least recently used out first).
"""

from __future__ import annotations

import collections
from collections.abc import Collection, Mapping, Sequence
from typing import Final

import psycopg

from grants.errors import LedgerUnavailableError
from ledger.client import Ledger
from ledger.codes import TransferCode
from ledger.db import Pool
from ledger.ids import dimension_set_id, leg_ids
from ledger.limits import BATCH_EVENTS_MAX
from ledger.operations import CHECK
from ledger.repositories.dimensions import get_dimension_sets, insert_dimension_sets
from ledger.repositories.projection import legacy_dimensions

KNOWN_SETS_MAX: Final = 200_000
# The codes of a spend's event 3, which carries its dimension set: its check leg (a settle's
# fallback debit under `cap`: the leg that gives back the shortfall).
_CARRIERS: Final = (TransferCode.CONTROL_CHECK, TransferCode.CONTROL_CAP)


class DimensionSets:
    def __init__(self, pool: Pool, *, known_max: int = KNOWN_SETS_MAX) -> None:
        self.pool = pool
        self.known_max = known_max
        self._known: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.written = 0  # sets this process wrote (or found written)

    async def ids(self, sets: Sequence[Mapping[str, str] | None]) -> list[int]:
        """The id of each set (0 for none), each written to Postgres before this returns.
        Raises LedgerUnavailableError when a new set cannot be written: the spend must not go
        to the engine with dimensions nobody could read back."""
        out = [dimension_set_id(s) if s else 0 for s in sets]
        known = self._known
        new: dict[int, Mapping[str, str]] = {}
        for set_id, dimensions in zip(out, sets, strict=True):
            if not set_id:
                continue
            if set_id in known:
                known.move_to_end(set_id)
            elif dimensions is not None:
                new[set_id] = dimensions
        if new:
            try:
                async with self.pool.connection() as conn:
                    await insert_dimension_sets(conn, list(new.items()))
            except (psycopg.Error, OSError) as error:
                raise LedgerUnavailableError(
                    f"the dimensions could not be recorded: {type(error).__name__}"
                ) from None
            self.written += len(new)
            for set_id in new:
                known[set_id] = None
            while len(known) > self.known_max:
                known.popitem(last=False)
        return out


async def dimensions_of_spends(
    ledger: Ledger, pool: Pool, spends: Collection[int]
) -> dict[int, dict[str, str]]:
    """The dimensions each spend (debit or reservation id) was sent with, read from its check
    leg's set id and the set's row; spends without dimensions are left out."""
    wanted = sorted(spends)
    sets: dict[int, int] = {}
    legacy: list[int] = []
    for start in range(0, len(wanted), BATCH_EVENTS_MAX):
        chunk = wanted[start : start + BATCH_EVENTS_MAX]
        checks = [leg_ids(spend, (CHECK,))[0] for spend in chunk]
        found = {t.id: t for t in await ledger.lookup_transfers(checks)}
        for spend, check_id in zip(chunk, checks, strict=True):
            check = found.get(check_id)
            if check is None or check.code not in _CARRIERS or not check.user_data_128:
                continue
            if check.user_data_128 == spend:  # a spend made before chains carried a set
                legacy.append(spend)
            else:
                sets[spend] = check.user_data_128
    if not sets and not legacy:
        return {}
    async with pool.connection() as conn:
        rows = await get_dimension_sets(conn, set(sets.values()))
        out = {spend: rows[set_id] for spend, set_id in sets.items() if set_id in rows}
        out.update(await legacy_dimensions(conn, legacy))
    return out
