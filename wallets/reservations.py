"""A wallet's reservations, read from the ledger: truthful and without lag (the movement
projection in Postgres is written after the fact, and a reservation's status changes there
without a row: a timeout releases it by itself).

How they are found (ledger/README.md, "Fields"):
- A reservation's set-up leg (`CONTROL_HOLD`, index 2 of its chain) carries the wallet in
  `user_data_128`, so `query_transfers` on (wallet, ledger, `CONTROL_HOLD`) lists a wallet's
  reservations in the order they were made; the set-up leg's timestamp is the list's cursor.
- The reservation's id (its operation id) is carried by its `CONTROL_NORMALIZE` leg, the event
  just before the set-up leg in the same chain: TigerBeetle gives the events of one request
  consecutive timestamps, so that leg is the one timestamp earlier. It is checked against the
  id derived from the operation before it is believed.
- The status is `wallets.statements.reservation_status`, as GET /v1/reservations/{id} has it:
  a lookup of the reservation's legs and its marker's resolution (ledger/README.md, "Reserve").

Invariant: one page examines at most RESERVATIONS_SCANNED_PER_PAGE_MAX reservations, so a
status filter that matches little costs a bounded number of engine reads per page; such a page
may hold fewer items than asked, with a cursor to go on from.
"""

from __future__ import annotations

import msgspec

from ledger.client import Ledger
from ledger.codes import TransferCode
from ledger.ids import leg_id
from ledger.limits import RESERVATIONS_SCANNED_PER_PAGE_MAX
from ledger.operations import NORMALIZE
from ledger.types import QueryFilter, QueryFilterFlags, Transfer
from wallets.catalog import Wallet
from wallets.statements import ReservationView, reservation_status


class ReservationsPage(msgspec.Struct, frozen=True):
    # (reservation id, where it stands), in the order the reservations were made.
    items: list[tuple[int, ReservationView]]
    # The set-up leg timestamp to go on after; None when no reservation follows.
    next_after_ns: int | None


def _query(
    wallet: Wallet, code: int, *, owner: int = 0, after_ns: int, until_ns: int = 0, limit: int
) -> QueryFilter:
    return QueryFilter(
        user_data_128=owner,
        user_data_64=0,
        user_data_32=0,
        ledger=wallet.ledger,
        code=code,
        timestamp_min=after_ns + 1,
        timestamp_max=until_ns,
        limit=limit,
        flags=QueryFilterFlags.NONE,
    )


def _setups(wallet: Wallet, *, after_ns: int, limit: int) -> QueryFilter:
    """The wallet's reservation set-up legs after `after_ns`."""
    return _query(
        wallet, TransferCode.CONTROL_HOLD, owner=wallet.id, after_ns=after_ns, limit=limit
    )


async def reservation_of(ledger: Ledger, wallet: Wallet, setup: Transfer) -> int:
    """The id of the reservation whose set-up leg this is."""
    before = setup.timestamp - 1
    (normalize,) = await ledger.query_transfers(
        _query(
            wallet, TransferCode.CONTROL_NORMALIZE, after_ns=before - 1, until_ns=before, limit=1
        )
    )
    reservation_id = normalize.user_data_128
    assert normalize.id == leg_id(reservation_id, NORMALIZE), "not the set-up leg's chain"
    return reservation_id


async def wallet_reservations(
    ledger: Ledger,
    wallet: Wallet,
    *,
    after_ns: int,
    limit: int,
    status: str | None,
    now_ns: int,
) -> ReservationsPage:
    """Up to `limit` of the wallet's reservations made after the set-up leg at `after_ns` (0:
    from the first), with `status` if given."""
    assert limit >= 1
    items: list[tuple[int, ReservationView]] = []
    cursor, scanned = after_ns, 0
    while len(items) < limit and scanned < RESERVATIONS_SCANNED_PER_PAGE_MAX:
        batch = min(limit - len(items), RESERVATIONS_SCANNED_PER_PAGE_MAX - scanned)
        legs = await ledger.query_transfers(_setups(wallet, after_ns=cursor, limit=batch))
        for setup in legs:
            cursor, scanned = setup.timestamp, scanned + 1
            reservation_id = await reservation_of(ledger, wallet, setup)
            view = await reservation_status(ledger, reservation_id, now_ns)
            if status is None or view.status == status:
                items.append((reservation_id, view))
        if len(legs) < batch:
            return ReservationsPage(items, None)
    # Stopped full (or at the scan bound): one more read says whether anything follows.
    following = await ledger.query_transfers(_setups(wallet, after_ns=cursor, limit=1))
    return ReservationsPage(items, cursor if following else None)
