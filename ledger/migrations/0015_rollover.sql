-- 0015: rollover of a credit block (ledger/README.md "Rollover").
--
-- A grant may carry a rollover policy: at its expiry, before the expiry sweep moves its
-- remainder to breakage, `carried = min(rollover_max, max(rollover_min, remaining))` credits go
-- to new blocks linked to it by `source_grant_id`: up to `remaining` of them move out of the
-- source (one ROLLOVER transfer, same category, cost basis per credit kept), and what the floor
-- adds beyond what was left (`rollover_min > remaining`) is a promotional block funded by the
-- promotional issuer. Both expire at `rollover_expires_at`.
--
-- `rollover_state` of the source: 'due' until the rollover has been decided; 'pending' once
-- the new rows are written ('pending', with their amounts fixed); 'done' once the ledger has
-- moved and the rows are 'active' (or nothing was to carry); 'refused' when the engine found
-- less left than the rows say (the block was voided meanwhile): the new rows are 'abandoned'.
-- The dual write goes: rows (new 'pending', source 'pending') in one transaction, then the
-- ledger (ids derived from the source), then rows 'active' and the source 'done'. The expiry
-- sweep never sweeps a block whose rollover is 'due' or 'pending'.
ALTER TABLE grants
    ADD COLUMN rollover_max        u128,
    ADD COLUMN rollover_min        u128,
    ADD COLUMN rollover_expires_at timestamptz,
    ADD COLUMN rollover_state      text
        CHECK (rollover_state IN ('due', 'pending', 'done', 'refused')),
    -- Which attempt of the rollover stands: the engine refused an attempt's transfer (a spend
    -- dated before the expiry took credits in between) -> its rows 'abandoned', the next
    -- attempt decided again with ids of its own (a refused transfer id is never usable again).
    ADD COLUMN rollover_attempt    smallint NOT NULL DEFAULT 0 CHECK (rollover_attempt >= 0),
    ADD COLUMN source_grant_id     uuid REFERENCES grants (id);
ALTER TABLE grants ADD CONSTRAINT grants_rollover_policy_check CHECK (
    (rollover_max IS NULL) = (rollover_min IS NULL)
    AND (rollover_max IS NULL) = (rollover_expires_at IS NULL)
    AND (rollover_max IS NULL) = (rollover_state IS NULL)
);
ALTER TABLE grants ADD CONSTRAINT grants_rollover_bounds_check CHECK (
    rollover_max IS NULL OR (
        rollover_min <= rollover_max AND expires_at IS NOT NULL
        AND rollover_expires_at > expires_at
    )
);
-- A rollover block names its source, and only a rollover block does.
ALTER TABLE grants ADD CONSTRAINT grants_rollover_source_check
    CHECK (source_grant_id IS NULL OR source = 'rollover');
-- The rollover pass looks for blocks past their expiry whose rollover is not done.
CREATE INDEX grants_rollover_due_idx ON grants (expires_at)
    WHERE rollover_state IN ('due', 'pending');
CREATE INDEX grants_source_grant_idx ON grants (source_grant_id)
    WHERE source_grant_id IS NOT NULL;
-- The abandoned state (migration 0004's operators' way out) is reused for a rollover block
-- the engine refused.

-- The projection: a ROLLOVER transfer is an entry of kind 'rollover' on each block (amount
-- negative on the source, positive on the rollover block); no consumption, so no rollup.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_check CHECK (kind IN (
    'grant', 'debit', 'reserve', 'settle', 'release', 'timeout', 'expire', 'void', 'refund',
    'refund_out', 'overdraft_draw', 'overdraft_repay', 'overdraft_limit', 'budget_usage',
    'budget_limit', 'correction', 'rollover'
));

-- Finance (finance/README.md "Rollover"): a rollover is neither revenue nor breakage. Each
-- block's journal of kind 'rollover' moves the value through 2190 (rollover clearing): the
-- source's Dr 2100 / Cr 2190, its rollover block's Dr 2190 / Cr 2100; promotional blocks have
-- memo rows 'rolled_over' (the source) and 'rolled_in' (the rollover block).
ALTER TABLE finance_journals DROP CONSTRAINT finance_journals_kind_check;
ALTER TABLE finance_journals ADD CONSTRAINT finance_journals_kind_check CHECK (kind IN (
    'purchase', 'usage', 'breakage', 'refund', 'correction', 'rollover'
));
ALTER TABLE finance_memo DROP CONSTRAINT finance_memo_kind_check;
ALTER TABLE finance_memo ADD CONSTRAINT finance_memo_kind_check CHECK (kind IN (
    'granted', 'consumed', 'expired', 'voided', 'restored', 'refunded', 'rolled_over',
    'rolled_in'
));
-- A rollover block's consideration in the functional currency is what its source gave up
-- there (its cumulative functional slice), not its consideration at the rate rounded anew: so
-- the rollover's two journals net 2190 to zero in the functional currency too. NULL: derived
-- from consideration_minor and the rate, as for every other block.
ALTER TABLE finance_blocks ADD COLUMN functional_consideration_minor bigint;
