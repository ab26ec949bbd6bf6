-- 0011: the outbox of events (webhooks, issue 12).
--
-- An event is written in the same transaction as what caused it (an allocation, a top-up), or
-- by a consumer of the projection in the transaction that moves its own watermark (balance
-- crossings, expiries, timeouts). Its id derives from what caused it (ledger.ids.derive_id over
-- the type and a key that names the cause), so that writing it again after a crash inserts
-- nothing: `INSERT ... ON CONFLICT (id) DO NOTHING`.
--
-- `seq` orders events by insertion (a later commit may carry a smaller seq: readers select by
-- `dispatched`, not by a seq cursor). `dispatched` turns true once the event was fanned out
-- into deliveries to the endpoints that want it (that is the only update an event takes).
CREATE TABLE events (
    id          uuid        PRIMARY KEY,
    seq         bigserial   NOT NULL UNIQUE,
    type        text        NOT NULL CHECK (type ~ '^[a-z][a-z_]*\.[a-z][a-z_]*$'),
    customer_id uuid,
    wallet_id   uuid,
    occurred_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    data        jsonb       NOT NULL DEFAULT '{}',
    dispatched  boolean     NOT NULL DEFAULT false
);
CREATE INDEX events_undispatched_idx ON events (seq) WHERE NOT dispatched;
CREATE INDEX events_occurred_at_idx ON events (occurred_at);
CREATE INDEX events_wallet_idx ON events (wallet_id, seq) WHERE wallet_id IS NOT NULL;
