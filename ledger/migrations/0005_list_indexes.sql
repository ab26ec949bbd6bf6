-- 0005: indexes for the API's lists.
--
-- Every list pages in (created_at, id) order (ledger/repositories/_rows.py, `fetch_page`), with
-- its filters as equality conditions: each filter below has an index that hands rows over in that
-- order already, so a page reads `limit + 1` index entries instead of sorting the table.
-- customers.external_ref (UNIQUE) and wallets (resource_id, credit_type_id) (UNIQUE) are indexed
-- by their constraints; a resource's external_ref is unique only per (customer, kind), so a
-- lookup by it alone gets an index of its own.

CREATE INDEX customers_created_at_idx ON customers (created_at, id);

CREATE INDEX resources_created_at_idx ON resources (created_at, id);
CREATE INDEX resources_customer_created_at_idx ON resources (customer_id, created_at, id);
-- Serves what resources_parent_id_idx served (children of a parent), in page order.
CREATE INDEX resources_parent_created_at_idx ON resources (parent_id, created_at, id);
DROP INDEX resources_parent_id_idx;
CREATE INDEX resources_external_ref_idx ON resources (external_ref)
    WHERE external_ref IS NOT NULL;

CREATE INDEX wallets_created_at_idx ON wallets (created_at, id);

CREATE INDEX grants_created_at_idx ON grants (created_at, id);
-- Serves what grants_wallet_id_idx served (a wallet's grants), in page order.
CREATE INDEX grants_wallet_created_at_idx ON grants (wallet_id, created_at, id);
DROP INDEX grants_wallet_id_idx;

CREATE INDEX budgets_created_at_idx ON budgets (created_at, id);
CREATE INDEX budgets_resource_created_at_idx ON budgets (resource_id, created_at, id);
