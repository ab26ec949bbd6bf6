-- 0006: prices keep their history.
--
-- A price of (feature, credit type) is no longer changed in place: each new price is a row of
-- its own, in force from its effective_at until the next row's (possibly set in advance, for a
-- time to come). The price in force at t is the row of that (feature, credit type) with the
-- latest effective_at <= t. Rows are never updated.
--
-- An existing row becomes one entry of the history. Its amount is the one set last, at
-- updated_at: in force since then (the amounts before it were overwritten; the audit log still
-- names them, under 'price.set').

ALTER TABLE prices ADD COLUMN effective_at timestamptz;
UPDATE prices SET effective_at = updated_at;
ALTER TABLE prices ALTER COLUMN effective_at SET NOT NULL;
ALTER TABLE prices DROP COLUMN updated_at;

ALTER TABLE prices DROP CONSTRAINT prices_feature_credit_type_id_key;
ALTER TABLE prices ADD CONSTRAINT prices_feature_credit_type_id_effective_at_key
    UNIQUE (feature, credit_type_id, effective_at);
-- The whole list pages in (effective_at, id) order; one price's history is served by the
-- unique constraint's index.
CREATE INDEX prices_effective_at_idx ON prices (effective_at, id);
