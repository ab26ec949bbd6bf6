-- 0008: the projection of the ledger into Postgres (ledger/README.md, "The projection").
--
-- TigerBeetle holds every balance and every movement; these tables are a read model derived from
-- it by the projection feed (wallets/projection.py): it reads the engine's transfers in timestamp
-- order from `projection_state.watermark_ts` and writes, in one transaction, the entries they
-- make, the rollups those entries add to, the pending legs still open, and the new watermark.
-- Everything here but `dimension_sets` can be rebuilt from the engine
-- (`credit-ledger projection rebuild`), with the same rows.

-- What a spend's dimensions were: one row per distinct set, its id a hash of the set
-- (`ledger.ids.dimension_set_id`), written (and committed) before the first spend that carries
-- the id in its chain. The engine keeps the id; this row gives it its meaning. Never changed.
CREATE TABLE dimension_sets (
    id         uuid        PRIMARY KEY,
    dimensions jsonb       NOT NULL CHECK (jsonb_typeof(dimensions) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION dimension_sets_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'dimension_sets is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER dimension_sets_append_only BEFORE UPDATE OR DELETE ON dimension_sets
    FOR EACH ROW EXECUTE FUNCTION dimension_sets_refuse_change();

-- The dimensions of spends made before their chains carried a dimension set (the rows the old
-- in-memory projection wrote); the feed reads them for those spends.
CREATE TABLE legacy_operation_dimensions (
    operation_id uuid  PRIMARY KEY,
    dimensions   jsonb NOT NULL
);
INSERT INTO legacy_operation_dimensions (operation_id, dimensions)
    SELECT operation_id, dimensions FROM movements WHERE dimensions <> '{}'::jsonb;
DROP TABLE movements;

-- One row per movement of credits on an owned account (a block, an overdraft account, a budget
-- account), with the transfer's code (a post, void or timeout: the pending transfer's): `amount` is the signed change of the account's posted balance (credits minus
-- debits), `pending` the signed change of what reservations hold on it (debits pending). Summed
-- per account, they are the account's balances in the engine. The key is the transfer, the
-- kind and the account (a partial post is a `settle` and a `release` of the same transfer, a
-- grant repaying an overdraft moves two owned accounts, a timeout has the pending transfer's
-- id). Partitioned by the month of the business effective time, so that old
-- periods can be detached and archived; the feed creates a month's partition before its first
-- row.
CREATE TABLE ledger_entries (
    transfer_id      uuid          NOT NULL,
    kind             text          NOT NULL CHECK (kind IN (
        'grant', 'debit', 'reserve', 'settle', 'release', 'timeout', 'expire', 'void', 'refund',
        'refund_out', 'overdraft_draw', 'overdraft_repay', 'overdraft_limit', 'budget_usage',
        'budget_limit', 'correction'
    )),
    effective_at     timestamptz   NOT NULL,
    engine_ts        bigint        NOT NULL CHECK (engine_ts > 0),
    code             integer       NOT NULL CHECK (code BETWEEN 1 AND 65535),
    credit_type_id   bigint        NOT NULL CHECK (credit_type_id BETWEEN 1 AND 4294967295),
    account_id       uuid          NOT NULL,
    account_kind     text          NOT NULL CHECK (account_kind IN ('block', 'overdraft', 'budget')),
    wallet_id        uuid,
    resource_id      uuid,
    customer_id      uuid,
    operation_id     uuid,
    reservation_id   uuid,
    amount           numeric(40,0) NOT NULL,
    pending          numeric(40,0) NOT NULL,
    dimension_set_id uuid,
    currency         char(3),
    value_minor      numeric(60,9) NOT NULL,
    PRIMARY KEY (transfer_id, kind, account_id, effective_at)
) PARTITION BY RANGE (effective_at);
-- Few indexes: the feed writes every entry once, at the engine's pace, and each index costs it.
-- Entries arrive in engine timestamp order, so a BRIN index serves ranges of engine time
-- (reconciliation) for almost nothing.
CREATE INDEX ledger_entries_account_idx ON ledger_entries (account_id);
CREATE INDEX ledger_entries_operation_idx ON ledger_entries (operation_id);
CREATE INDEX ledger_entries_engine_ts_idx ON ledger_entries USING brin (engine_ts);

-- Consumption per hour and per day (`grain`), maintained by the feed in the transaction of the
-- entries it adds up: credits consumed (debits, settles, overdraft draws, less usage refunds)
-- and their value at the blocks' cost basis, per currency ('' where there is none: promotional
-- blocks, overdraft). `GET /v1/usage` reads these, never the entries.
CREATE TABLE usage_rollups (
    customer_id      uuid          NOT NULL,
    grain            text          NOT NULL CHECK (grain IN ('hour', 'day')),
    bucket_start     timestamptz   NOT NULL,
    resource_id      uuid          NOT NULL,
    wallet_id        uuid          NOT NULL,
    credit_type_id   bigint        NOT NULL,
    dimension_set_id uuid          NOT NULL,
    currency         text          NOT NULL,
    credits          numeric(40,0) NOT NULL,
    value_minor      numeric(60,9) NOT NULL,
    entries          bigint        NOT NULL,
    PRIMARY KEY (customer_id, grain, bucket_start, resource_id, wallet_id, credit_type_id,
                 dimension_set_id, currency)
);

-- Pending legs on owned accounts that are neither posted nor voided: a timeout becomes an entry
-- once the feed has read past `expires_at_ns` (README: "Timeouts").
CREATE TABLE projection_pending (
    transfer_id      uuid          PRIMARY KEY,
    expires_at_ns    bigint        NOT NULL,
    amount           numeric(40,0) NOT NULL,
    code             integer       NOT NULL,
    credit_type_id   bigint        NOT NULL,
    account_id       uuid          NOT NULL,
    account_kind     text          NOT NULL,
    owner_id         uuid          NOT NULL,
    wallet_id        uuid,
    reservation_id   uuid,
    dimension_set_id uuid
);
CREATE INDEX projection_pending_expiry_idx ON projection_pending (expires_at_ns);

-- Where the feed stands: the engine timestamp of the last transfer projected (0: none yet),
-- committed with the rows it covers; `caught_up_ns`: the wall time (ns) at which the leading
-- feed last found that the engine had nothing newer (written at most once a second), so that
-- every process can tell the projection's lag (wallets/projection.py, `lag_s`).
CREATE TABLE projection_state (
    name         text        PRIMARY KEY CHECK (name = 'ledger'),
    watermark_ts bigint      NOT NULL CHECK (watermark_ts >= 0),
    entries      bigint      NOT NULL CHECK (entries >= 0),
    caught_up_ns bigint      NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO projection_state (name, watermark_ts, entries) VALUES ('ledger', 0, 0);

-- Each run of the projection's reconciliation (engine against projection): which range of
-- engine time it covered and what differed. A run compares a range of engine time (counts and
-- sums per transfer code) and the whole state (every account's balance, the catalog against
-- the engine's accounts); the next run's range starts after the last run whose range was clean
-- (`range_clean`): a difference of the whole state (an account the catalog does not know stays
-- on the engine forever) does not hold back the check of the transfers that follow.
CREATE TABLE projection_checks (
    id          bigserial   PRIMARY KEY,
    ran_at      timestamptz NOT NULL DEFAULT now(),
    from_ts     bigint      NOT NULL,
    through_ts  bigint      NOT NULL,
    clean       boolean     NOT NULL,
    range_clean boolean     NOT NULL DEFAULT false,
    differences jsonb       NOT NULL DEFAULT '[]'
);
