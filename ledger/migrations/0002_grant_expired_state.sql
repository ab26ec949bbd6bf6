-- A grant past its expiry stays 'active' until the sweep has moved everything it held to
-- breakage and nothing more can come back to it (no reservation holds any of it); then it is
-- 'expired'. Active grants past expires_at are still loaded into the cache, so that the sweep
-- finds what a late release returned to them.
ALTER TABLE grants DROP CONSTRAINT grants_state_check;
ALTER TABLE grants ADD CONSTRAINT grants_state_check
    CHECK (state IN ('pending', 'active', 'voided', 'expired'));
