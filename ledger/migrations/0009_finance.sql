-- 0009: the finance subledger (finance/README.md): journals of revenue recognition under
-- ASC 606, derived from the projection's entries on credit blocks, periods that close, and the
-- balances a closed period keeps so that its reports never read another period.
--
-- Journals and their lines, the promotional memo and the closed periods' balances are
-- append-only: a trigger refuses UPDATE and DELETE (and TRUNCATE). Nothing is ever edited;
-- corrections are new journals in the open period. `finance_blocks` and `finance_state` are the
-- poster's working state, changed in the transaction of the journals they account for.

CREATE FUNCTION finance_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Periods are calendar months in UTC. A month without a row is open; closing inserts its row
-- ('closed'), locking moves it to 'locked'. Nothing else changes a row, and none is deleted.
CREATE TABLE finance_periods (
    period_start date        PRIMARY KEY CHECK (extract(day FROM period_start) = 1),
    state        text        NOT NULL CHECK (state IN ('closed', 'locked')),
    closed_at    timestamptz NOT NULL,
    closed_by    text        NOT NULL CHECK (closed_by <> ''),
    locked_at    timestamptz,
    locked_by    text,
    -- The poster's watermark (engine time) when the period closed, and the checks it passed.
    watermark_ts bigint      NOT NULL,
    checks       jsonb       NOT NULL,
    CHECK ((state = 'locked') = (locked_at IS NOT NULL))
);

CREATE FUNCTION finance_periods_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.state = 'closed' AND NEW.state = 'locked'
            AND NEW.period_start = OLD.period_start AND NEW.closed_at = OLD.closed_at
            AND NEW.closed_by = OLD.closed_by AND NEW.watermark_ts = OLD.watermark_ts
            AND NEW.checks = OLD.checks THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'finance_periods: a period only goes closed -> locked (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER finance_periods_guard BEFORE UPDATE OR DELETE ON finance_periods
    FOR EACH ROW EXECUTE FUNCTION finance_periods_guard();
CREATE TRIGGER finance_periods_no_truncate BEFORE TRUNCATE ON finance_periods
    FOR EACH STATEMENT EXECUTE FUNCTION finance_refuse_change();

-- Policies of breakage per product (credit type): the remote method (at expiry) unless a
-- policy says 'proportional' with a rate, for blocks that take effect on or after its date.
-- Never changed: a new policy is a new row with a later date.
CREATE TABLE finance_breakage_policies (
    credit_type_id bigint      NOT NULL REFERENCES credit_types (id),
    effective_from timestamptz NOT NULL,
    method         text        NOT NULL CHECK (method IN ('remote', 'proportional')),
    rate           numeric     NOT NULL DEFAULT 0 CHECK (rate >= 0 AND rate < 1),
    actor          text        NOT NULL CHECK (actor <> ''),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (credit_type_id, effective_from),
    CHECK (method = 'proportional' OR rate = 0)
);
CREATE TRIGGER finance_breakage_policies_append_only BEFORE UPDATE OR DELETE
    ON finance_breakage_policies FOR EACH ROW EXECUTE FUNCTION finance_refuse_change();

-- A journal: one balanced entry (two lines or more), for one block, from one or more
-- transfers. `id` is derived from its source (ledger.ids.journal_id); what keeps an entry from
-- being posted twice is the poster's watermark, which moves in the transaction of the journals
-- it covers. `seq` is the posting order.
-- `posting_period` is the month it is booked in: the month of `accounting_date` (the business
-- effective time) when that month is open, else the first open month (a prior-period
-- adjustment: `adjusts_period` names the closed month it belongs to).
CREATE TABLE finance_journals (
    id                 uuid          NOT NULL,
    seq                bigint        NOT NULL,
    posting_period     date          NOT NULL,
    accounting_date    timestamptz   NOT NULL,
    engine_ts          bigint        NOT NULL,
    kind               text          NOT NULL CHECK (kind IN (
        'purchase', 'usage', 'breakage', 'refund', 'correction'
    )),
    block_id           uuid          NOT NULL,
    customer_id        uuid,
    credit_type_id     bigint        NOT NULL,
    wallet_id          uuid,
    resource_id        uuid,
    operation_id       uuid,
    dimension_set_id   uuid,
    currency           char(3)       NOT NULL,
    credits            numeric(40,0) NOT NULL,
    source_transfer_ids uuid[]       NOT NULL CHECK (cardinality(source_transfer_ids) >= 1),
    actor              text          NOT NULL,
    reason             text          NOT NULL,
    adjusts_period     date,
    PRIMARY KEY (posting_period, id)
) PARTITION BY RANGE (posting_period);
CREATE INDEX finance_journals_block_idx ON finance_journals (block_id);
CREATE INDEX finance_journals_operation_idx ON finance_journals (operation_id);
CREATE INDEX finance_journals_seq_idx ON finance_journals (posting_period, seq);
-- Reconciliation compares the journals of a range of engine time with the projection's entries.
CREATE INDEX finance_journals_engine_ts_idx ON finance_journals USING brin (engine_ts);

-- The lines of a journal. `account` is the default chart's code (ACCOUNTING.md: 1010, 2100,
-- 4000, 4050, 4900); exports map it to the ERP's. Amounts in minor units of the journal's
-- currency; `functional_minor` at the block's rate of receipt (null: no rate known).
CREATE TABLE finance_journal_lines (
    journal_id       uuid    NOT NULL,
    posting_period   date    NOT NULL,
    line             smallint NOT NULL CHECK (line >= 1),
    account          text    NOT NULL,
    debit_minor      bigint  NOT NULL CHECK (debit_minor >= 0),
    credit_minor     bigint  NOT NULL CHECK (credit_minor >= 0),
    functional_debit_minor  bigint,
    functional_credit_minor bigint,
    CHECK (debit_minor = 0 OR credit_minor = 0),
    PRIMARY KEY (posting_period, journal_id, line)
) PARTITION BY RANGE (posting_period);

-- The promotional memo (no journal: promotional credits have no consideration): what was
-- granted, consumed, expired, voided or restored, per block, in credits.
CREATE TABLE finance_memo (
    id              uuid          NOT NULL,
    seq             bigint        NOT NULL,
    posting_period  date          NOT NULL,
    accounting_date timestamptz   NOT NULL,
    engine_ts       bigint        NOT NULL,
    kind            text          NOT NULL CHECK (kind IN (
        'granted', 'consumed', 'expired', 'voided', 'restored', 'refunded'
    )),
    block_id        uuid          NOT NULL,
    customer_id     uuid,
    credit_type_id  bigint        NOT NULL,
    credits         numeric(40,0) NOT NULL,
    transfer_id     uuid          NOT NULL,
    adjusts_period  date,
    PRIMARY KEY (posting_period, id)
);

CREATE TRIGGER finance_journals_append_only BEFORE UPDATE OR DELETE ON finance_journals
    FOR EACH ROW EXECUTE FUNCTION finance_refuse_change();
CREATE TRIGGER finance_journal_lines_append_only BEFORE UPDATE OR DELETE ON finance_journal_lines
    FOR EACH ROW EXECUTE FUNCTION finance_refuse_change();
CREATE TRIGGER finance_memo_append_only BEFORE UPDATE OR DELETE ON finance_memo
    FOR EACH ROW EXECUTE FUNCTION finance_refuse_change();
CREATE TRIGGER finance_journals_no_truncate BEFORE TRUNCATE ON finance_journals
    FOR EACH STATEMENT EXECUTE FUNCTION finance_refuse_change();
CREATE TRIGGER finance_journal_lines_no_truncate BEFORE TRUNCATE ON finance_journal_lines
    FOR EACH STATEMENT EXECUTE FUNCTION finance_refuse_change();
CREATE TRIGGER finance_memo_no_truncate BEFORE TRUNCATE ON finance_memo
    FOR EACH STATEMENT EXECUTE FUNCTION finance_refuse_change();

-- Each block the poster has seen: its terms (fixed at the grant) and where its recognition
-- stands. `credits_out` (D) are the credits that have left the block by any route, net of
-- restored ones; `value_out_minor` = value(D) = round_half_away(C x D / G): every movement
-- posts the change of value(D), so a block that is used up has posted exactly C.
-- `accrued_minor` is proportional breakage recognized ahead of expiry.
CREATE TABLE finance_blocks (
    block_id              uuid          PRIMARY KEY,
    customer_id           uuid,
    wallet_id             uuid,
    resource_id           uuid,
    credit_type_id        bigint        NOT NULL,
    category              text          NOT NULL CHECK (category IN ('paid', 'promotional')),
    currency              char(3),
    credits               numeric(40,0) NOT NULL CHECK (credits > 0),
    consideration_minor   bigint        NOT NULL CHECK (consideration_minor >= 0),
    exchange_rate         numeric,
    effective_at          timestamptz   NOT NULL,
    expires_at            timestamptz,
    method                text          NOT NULL CHECK (method IN ('remote', 'proportional')),
    rate                  numeric       NOT NULL,
    credits_out           numeric(40,0) NOT NULL,
    credits_used          numeric(40,0) NOT NULL,
    value_out_minor       bigint        NOT NULL,
    functional_out_minor  bigint,
    accrued_minor         bigint        NOT NULL,
    functional_accrued_minor bigint,
    granted_period        date          NOT NULL
);

-- Where the poster stands: the engine timestamp of the last projected entry it has posted
-- (entries are read in engine time order, up to the projection's watermark), and the last seq.
CREATE TABLE finance_state (
    name         text    PRIMARY KEY CHECK (name = 'finance'),
    watermark_ts bigint  NOT NULL CHECK (watermark_ts >= 0),
    seq          bigint  NOT NULL CHECK (seq >= 0),
    journals     bigint  NOT NULL CHECK (journals >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO finance_state (name, watermark_ts, seq, journals) VALUES ('finance', 0, 0, 0);

-- What a closed period keeps, written in the transaction that closes it, so that the next
-- period's reports start from it instead of reading history: each paid block's remaining
-- obligation at the period's end (with its opening and the revenue recognized from it in the
-- period; blocks with neither an obligation nor a movement are left out), and the rollforward
-- per currency.
CREATE TABLE finance_period_blocks (
    period_start    date        NOT NULL,
    block_id        uuid        NOT NULL,
    customer_id     uuid,
    credit_type_id  bigint      NOT NULL,
    currency        char(3)     NOT NULL,
    expires_at      timestamptz,
    opening_minor   bigint      NOT NULL,
    recognized_minor bigint     NOT NULL,
    remaining_minor bigint      NOT NULL,
    functional_remaining_minor bigint,
    PRIMARY KEY (period_start, block_id)
);
CREATE TABLE finance_period_balances (
    period_start      date   NOT NULL,
    currency          char(3) NOT NULL,
    opening_minor     bigint NOT NULL,
    additions_minor   bigint NOT NULL,
    usage_minor       bigint NOT NULL,
    breakage_minor    bigint NOT NULL,
    refunds_minor     bigint NOT NULL,
    adjustments_minor bigint NOT NULL,
    closing_minor     bigint NOT NULL,
    from_opening_minor bigint NOT NULL,
    PRIMARY KEY (period_start, currency)
);
CREATE TRIGGER finance_period_blocks_append_only BEFORE UPDATE OR DELETE ON finance_period_blocks
    FOR EACH ROW EXECUTE FUNCTION finance_refuse_change();
CREATE TRIGGER finance_period_balances_append_only BEFORE UPDATE OR DELETE
    ON finance_period_balances FOR EACH ROW EXECUTE FUNCTION finance_refuse_change();
