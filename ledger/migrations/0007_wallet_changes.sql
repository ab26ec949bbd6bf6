-- 0007: changes of a wallet's overdraft policy, recorded before the ledger moves.
--
-- A soft wallet's bounded overdraft account is credited its limit (ledger/README.md,
-- "Overdraft"), so changing the limit (or leaving or joining 'soft') moves credits in
-- TigerBeetle, and lowering it can be refused there (the overdraft drawn, held draws included,
-- is more than the new limit). The dual write therefore goes (wallets/control.py):
-- 1. this row, 'pending', with the policy asked for (and the claimed idempotency key);
-- 2. TigerBeetle: the limit's transfer, its id derived from this row's id;
-- 3. in one transaction holding the wallet's row lock: the wallet row takes the new policy and
--    this row is 'applied' (with the audit entry), or this row is 'refused' and the wallet row
--    stays as it was.
-- `wallets` itself therefore only ever says what the ledger holds. A crash after 1 leaves a
-- pending row that reconciliation (or a retry with the same key) finishes; at most one change
-- of a wallet is pending at a time.
CREATE TABLE wallet_changes (
    id              uuid        PRIMARY KEY,
    wallet_id       uuid        NOT NULL REFERENCES wallets (id),
    overdraft_mode  text        NOT NULL CHECK (overdraft_mode IN ('hard', 'soft', 'unbounded')),
    overdraft_limit u128        NOT NULL,
    fall_through    boolean     NOT NULL,
    state           text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'applied', 'refused')),
    actor           text        NOT NULL CHECK (actor <> ''),
    refusal         text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CHECK (overdraft_mode = 'soft' OR overdraft_limit = 0),
    CHECK (overdraft_mode <> 'soft' OR overdraft_limit > 0),
    CHECK ((state = 'pending') = (finished_at IS NULL)),
    CHECK ((state = 'refused') = (refusal IS NOT NULL))
);
CREATE UNIQUE INDEX wallet_changes_one_pending_idx ON wallet_changes (wallet_id)
    WHERE state = 'pending';
CREATE INDEX wallet_changes_wallet_idx ON wallet_changes (wallet_id, created_at);
