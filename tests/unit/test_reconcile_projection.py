"""The pure half of the projection's reconciliation: what a transfer adds to the counts and sums
per (credit type, code, form), how two sets of them differ, when a gap in debits pending is a
timeout the engine had not applied yet, and how differences are kept."""

from __future__ import annotations

from ledger.codes import TransferCode
from ledger.repositories.projection_checks import Totals
from ledger.types import Transfer, TransferFlags
from wallets.reconcile_projection import (
    Bucket,
    Difference,
    compare_totals,
    pending_gap_explained,
    recorded,
    summarize,
    tally,
    tally_timeout,
)

BLOCK, OVERDRAFT, DRAIN = 1, 2, 3
OWNED = {BLOCK, OVERDRAFT}
L = 9


def owned(account: int) -> bool:
    return account in OWNED


def transfer(**kw: object) -> Transfer:
    fields: dict[str, object] = {
        "id": 100,
        "debit_account_id": BLOCK,
        "credit_account_id": DRAIN,
        "amount": 10,
        "ledger": L,
        "code": TransferCode.DEBIT,
    }
    fields.update(kw)
    return Transfer(**fields)  # type: ignore[arg-type]


def rows(totals: dict[Bucket, Totals]) -> dict[Bucket, tuple[int, int, int, int, int]]:
    return {bucket: t.row() for bucket, t in totals.items()}


def test_a_plain_transfer_counts_each_owned_account_it_moves() -> None:
    totals: dict[Bucket, Totals] = {}
    tally(totals, transfer(), owned, None)
    repay = transfer(
        id=101, credit_account_id=OVERDRAFT, amount=30, code=TransferCode.OVERDRAFT_REPAY
    )
    tally(totals, repay, owned, None)
    tally(totals, transfer(id=102, amount=0), owned, None)  # moved nothing
    tally(totals, transfer(id=103, debit_account_id=DRAIN, credit_account_id=4), owned, None)
    assert rows(totals) == {
        (L, TransferCode.DEBIT, "posted"): (1, 10, 0, 0, 0),
        (L, TransferCode.OVERDRAFT_REPAY, "posted"): (2, 30, 30, 0, 0),
    }


def test_pending_post_and_void() -> None:
    totals: dict[Bucket, Totals] = {}
    leg = transfer(code=TransferCode.RESERVE, flags=TransferFlags.PENDING, amount=40, timeout=60)
    tally(totals, leg, owned, None)
    post = TransferFlags.POST_PENDING_TRANSFER
    partial = transfer(id=200, code=TransferCode.RESERVE, flags=post, amount=15, pending_id=100)
    tally(totals, partial, owned, leg)
    void = transfer(
        id=201,
        code=TransferCode.RESERVE,
        flags=TransferFlags.VOID_PENDING_TRANSFER,
        amount=40,
        pending_id=100,
    )
    tally(totals, void, owned, leg)
    nothing = transfer(id=202, code=TransferCode.RESERVE, flags=post, amount=0, pending_id=100)
    tally(totals, nothing, owned, leg)  # a post of nothing only releases: a void
    tally_timeout(totals, leg)
    assert rows(totals) == {
        (L, TransferCode.RESERVE, "pending"): (1, 0, 0, 40, 0),
        (L, TransferCode.RESERVE, "post"): (1, 15, 0, 0, 40),
        (L, TransferCode.RESERVE, "void"): (2, 0, 0, 0, 80),
        (L, TransferCode.RESERVE, "timeout"): (1, 0, 0, 0, 40),
    }


def test_differences_name_the_bucket_and_both_sides() -> None:
    engine = {(L, 3, "posted"): Totals(2, 20, 0, 0, 0), (L, 4, "pending"): Totals(1, 0, 0, 5, 0)}
    entries = {(L, 3, "posted"): Totals(1, 10, 0, 0, 0), (L, 4, "pending"): Totals(1, 0, 0, 5, 0)}
    (difference,) = compare_totals(engine, entries)
    assert difference.kind == "totals"
    assert difference.detail["code"] == "DEBIT" and difference.detail["form"] == "posted"
    assert difference.detail["engine"]["debited"] == 20
    assert difference.detail["entries"]["movements"] == 1
    (only_there,) = compare_totals({}, {(L, 999, "posted"): Totals(1, 1, 0, 0, 0)})
    assert only_there.detail["code"] == "999" and only_there.detail["engine"]["movements"] == 0


def test_a_pending_gap_is_the_latest_timeouts_the_engine_had_not_applied() -> None:
    assert pending_gap_explained(0, [])
    assert pending_gap_explained(2, [2, 3])
    assert pending_gap_explained(5, [2, 3])
    assert not pending_gap_explained(3, [2, 3])  # not the latest ones: a real difference
    assert not pending_gap_explained(-2, [2])
    assert not pending_gap_explained(1, [])


def test_differences_are_counted_all_and_kept_a_few_of_each() -> None:
    many = [Difference("balance", {"n": i}) for i in range(50)]
    counts, examples = summarize([Difference("timeout", {"n": 0}), *many])
    assert counts == {"timeout": 1, "balance": 50}
    assert [d.kind for d in examples[:2]] == ["timeout", "balance"]
    kept = recorded(counts, examples)
    assert [(k["kind"], k["count"], len(k["examples"])) for k in kept] == [
        ("timeout", 1, 1),
        ("balance", 50, 20),
    ]
