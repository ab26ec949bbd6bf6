-- 0009: an entry is keyed by its account too; a reconciliation run says whether its range of
-- engine time was clean (ledger/README.md, "Reconciliation of the projection").
--
-- A transfer between two owned accounts makes two entries of one kind: an `OVERDRAFT_REPAY`
-- from a block to the wallet's overdraft account (-x on the block, +x on the overdraft), a
-- `CORRECTION` between two of them. Keyed by (transfer, kind, effective_at) alone, the second
-- entry collided with the first and `ON CONFLICT DO NOTHING` dropped it: the overdraft account's
-- entries no longer summed to its balance. The account joins the key; the projection, derived
-- from the engine alone, is emptied so that the feed writes it again from zero (the dimension
-- sets, which are not derived, stay).
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey;
ALTER TABLE ledger_entries ADD PRIMARY KEY (transfer_id, kind, account_id, effective_at);

TRUNCATE ledger_entries, usage_rollups, projection_pending;
UPDATE projection_state SET watermark_ts = 0, entries = 0, updated_at = now() WHERE name = 'ledger';

-- A run compares a range of engine time (counts and sums per transfer code) and the whole state
-- (every account's balance, the catalog against the engine's accounts). The range of the next
-- run starts after the last run whose range was clean: a difference of the whole state (an
-- account the catalog does not know stays on the engine forever) does not hold back the check
-- of the transfers that follow. The runs before this migration checked the projection emptied
-- above: none of their ranges counts as checked, so the next run starts from the beginning.
ALTER TABLE projection_checks ADD COLUMN range_clean boolean NOT NULL DEFAULT false;
