-- 0003: API keys for the HTTP API (`Authorization: Bearer <key>`).
--
-- A key is `clk_` followed by 43 characters of URL-safe base64 (256 random bits). It is shown
-- once, when it is created; only its sha-256 is stored. A fast hash is right here: the key has
-- 256 bits of entropy, so there is nothing for a slow password hash to protect against, and the
-- lookup stays cheap. `prefix` (the key's first 12 characters) identifies a key in listings and
-- logs without revealing it.
--
-- scopes: 'runtime' (check, debit, reserve, settle, release and reads), 'admin' (catalog,
-- grants, budgets, keys), 'finance' (reports and reads). A key bound to a customer
-- (customer_id) sees only that customer's objects. A revoked key keeps its row (revoked_at set
-- once, never cleared) so that the audit log and listings can still name it.
CREATE TABLE api_keys (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL CHECK (name <> '' AND char_length(name) <= 200),
    prefix      text        NOT NULL UNIQUE CHECK (char_length(prefix) = 12),
    secret_hash bytea       NOT NULL UNIQUE CHECK (octet_length(secret_hash) = 32),
    scopes      text[]      NOT NULL CHECK (
        cardinality(scopes) > 0
        AND array_position(scopes, NULL) IS NULL
        AND scopes <@ ARRAY['runtime', 'admin', 'finance']::text[]
    ),
    customer_id uuid        REFERENCES customers (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK (revoked_at IS NULL OR revoked_at >= created_at)
);
CREATE INDEX api_keys_customer_id_idx ON api_keys (customer_id) WHERE customer_id IS NOT NULL;

-- Every process keeps the active keys in memory (api/auth.py, KeyCache): a change notifies
-- catalog_changed like the catalog tables do, so a revoked key stops working everywhere.
CREATE TRIGGER api_keys_notify AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION notify_catalog_changed();
