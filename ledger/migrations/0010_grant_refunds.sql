-- 0010: refunds in money of unused paid credits, and the exchange rate of a block at receipt.
--
-- A refund takes unused credits out of a paid block (`GRANT_REFUND` grant -> refunded on the
-- ledger, ledger/README.md "Other chains") and records the money given back. The dual write
-- (wallets/control.py, `ControlPlane.refund_grant`) goes:
-- 1. one transaction: the idempotency key claimed, this row 'pending' with the exact credits
--    to take out and the money returned, the audit entry;
-- 2. TigerBeetle: one transfer of exactly `credits` (never a balancing one), id and
--    user_data_128 = `operation_id`, user_data_64 = `effective_at` (ns);
-- 3. this row 'applied', or 'refused' (with why) when the engine refused the transfer (the
--    block had less left by then); a refused refund moved nothing and never will.
-- A crash after 1 leaves a 'pending' row: a retry with the same key, or reconciliation,
-- runs 2 and 3 again (the transfer's id is fixed, so the engine answers `exists` if it was
-- applied). The engine decides: a `refund_out` entry of the projection (whose operation_id is
-- this row's) means the refund happened, whatever this row's state says meanwhile.
--
-- Append-only: the trigger refuses DELETE, TRUNCATE and every UPDATE but the one that
-- finishes a pending row (its state, refusal and finished_at; nothing else ever changes).
CREATE TABLE grant_refunds (
    operation_id   uuid        PRIMARY KEY,
    grant_id       uuid        NOT NULL REFERENCES grants (id),
    credit_type_id bigint      NOT NULL CHECK (credit_type_id BETWEEN 1 AND 4294967295),
    credits        u128        NOT NULL CHECK (credits > 0),
    refund_minor   bigint      NOT NULL CHECK (refund_minor >= 0),
    currency       char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- true when the caller asked for all that was left (credits: what was left then)
    whole          boolean     NOT NULL,
    effective_at   timestamptz NOT NULL,
    state          text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'applied', 'refused')),
    refusal        text,
    actor          text        NOT NULL CHECK (actor <> ''),
    reason         text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    CHECK ((state = 'pending') = (finished_at IS NULL)),
    CHECK ((state = 'refused') = (refusal IS NOT NULL))
);
CREATE INDEX grant_refunds_grant_idx ON grant_refunds (grant_id, created_at);
CREATE INDEX grant_refunds_pending_idx ON grant_refunds (created_at) WHERE state = 'pending';

CREATE FUNCTION grant_refunds_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.state = 'pending' AND NEW.state IN ('applied', 'refused')
        AND to_jsonb(NEW) - 'state' - 'refusal' - 'finished_at'
            = to_jsonb(OLD) - 'state' - 'refusal' - 'finished_at' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'grant_refunds is append-only: % is not allowed (only a pending refund is'
        ' finished, once)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER grant_refunds_append_only BEFORE UPDATE OR DELETE ON grant_refunds
    FOR EACH ROW EXECUTE FUNCTION grant_refunds_refuse_change();
CREATE TRIGGER grant_refunds_no_truncate BEFORE TRUNCATE ON grant_refunds
    FOR EACH STATEMENT EXECUTE FUNCTION grant_refunds_refuse_change();

-- Reconciliation finishes pending refunds, and records those it cannot finish.
ALTER TABLE reconcile_failures DROP CONSTRAINT reconcile_failures_kind_check;
ALTER TABLE reconcile_failures ADD CONSTRAINT reconcile_failures_kind_check CHECK (
    kind IN ('credit_type', 'wallet', 'wallet_change', 'budget', 'grant', 'grant_refund')
);

-- The rate of a block's receipt: units of the service's functional currency per unit of the
-- block's `currency`, as given at issue (1 for the functional currency itself; NULL: unknown,
-- or a promotional block). Set at issue, never changed: the liability is never remeasured.
ALTER TABLE grants ADD COLUMN exchange_rate numeric CHECK (exchange_rate > 0);
ALTER TABLE grants ADD CONSTRAINT grants_exchange_rate_currency_check
    CHECK (exchange_rate IS NULL OR currency IS NOT NULL);

CREATE FUNCTION grants_keep_exchange_rate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a grant''s exchange_rate is set at issue and never changed'
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER grants_exchange_rate_fixed BEFORE UPDATE OF exchange_rate ON grants
    FOR EACH ROW WHEN (OLD.exchange_rate IS DISTINCT FROM NEW.exchange_rate)
    EXECUTE FUNCTION grants_keep_exchange_rate();
