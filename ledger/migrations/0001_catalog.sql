-- 0001: the catalog (control plane), idempotency of admin operations, the audit log, and the
-- projection of hot-path movements.
--
-- Conventions (ledger/db.py and ledger/repositories/ convert at the boundary):
-- - A u128 id (a TigerBeetle account id, an operation id, any object id) is a `uuid`, whose 128
--   bits are the integer's big-endian bytes: Python `uuid.UUID(int=n)`.
-- - An amount of credits is a `u128`: numeric(39,0) checked to 0 <= n < 2^128, in units of
--   10^-asset_scale of its credit type. Money is integer minor units in a bigint.
-- - A time is a timestamptz; sessions run with TimeZone=UTC.
-- - A change to a catalog row notifies channel `catalog_changed` with '<table>:<id>', delivered
--   when the transaction commits, so that in-process caches of every process can invalidate.

CREATE DOMAIN u128 AS numeric(39, 0)
    CHECK (VALUE >= 0 AND VALUE < 340282366920938463463374607431768211456);

-- One TigerBeetle ledger per credit type: the id is the ledger number, a u32 that is never 0.
CREATE TABLE credit_types (
    id          bigint      PRIMARY KEY CHECK (id BETWEEN 1 AND 4294967295),
    code        text        NOT NULL UNIQUE CHECK (code ~ '^[a-z][a-z0-9_]{0,63}$'),
    name        text        NOT NULL CHECK (name <> ''),
    asset_scale smallint    NOT NULL CHECK (asset_scale BETWEEN 0 AND 18),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A customer's tenant is the u32 that TigerBeetle carries in user_data_32; 0 means "no tenant"
-- (system accounts, operator actions) and is never a customer's.
CREATE TABLE customers (
    id           uuid        PRIMARY KEY,
    tenant       bigint      NOT NULL UNIQUE CHECK (tenant BETWEEN 1 AND 4294967295),
    external_ref text        UNIQUE CHECK (external_ref <> ''),
    name         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Resources form a forest per customer: a parent belongs to the same customer (the composite
-- foreign key), and the trigger below refuses a cycle when a parent changes.
CREATE TABLE resources (
    id           uuid        PRIMARY KEY,
    customer_id  uuid        NOT NULL REFERENCES customers (id),
    kind         text        NOT NULL CHECK (
        kind IN ('subscription', 'team', 'agent', 'user', 'workspace', 'session')
    ),
    parent_id    uuid,
    external_ref text        CHECK (external_ref <> ''),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, customer_id),
    UNIQUE (customer_id, kind, external_ref),
    CHECK (parent_id <> id),
    FOREIGN KEY (parent_id, customer_id) REFERENCES resources (id, customer_id)
);
CREATE INDEX resources_parent_id_idx ON resources (parent_id);

CREATE FUNCTION resources_refuse_cycle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.parent_id IS NOT NULL AND EXISTS (
        WITH RECURSIVE up (id, parent_id, depth) AS (
            SELECT r.id, r.parent_id, 1 FROM resources r WHERE r.id = NEW.parent_id
            UNION ALL
            SELECT r.id, r.parent_id, up.depth + 1
            FROM resources r JOIN up ON r.id = up.parent_id
            WHERE up.depth < 1000
        )
        SELECT 1 FROM up WHERE up.id = NEW.id
    ) THEN
        RAISE EXCEPTION 'resource % cannot have % as its parent: that makes a cycle',
            NEW.id, NEW.parent_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER resources_refuse_cycle BEFORE UPDATE OF parent_id ON resources
    FOR EACH ROW EXECUTE FUNCTION resources_refuse_cycle();

-- One wallet per (resource, credit type). overdraft_mode: 'hard' (no overdraft), 'soft' (up to
-- overdraft_limit, through a bounded overdraft account), 'unbounded' (an unbounded overdraft
-- account). The overdraft account id is deterministic (ledger.ids.overdraft_account_id) and
-- stays recorded when a wallet goes back to 'hard', since a deficit may still be owed on it.
CREATE TABLE wallets (
    id                   uuid        PRIMARY KEY,
    resource_id          uuid        NOT NULL REFERENCES resources (id),
    credit_type_id       bigint      NOT NULL REFERENCES credit_types (id),
    overdraft_mode       text        NOT NULL DEFAULT 'hard'
        CHECK (overdraft_mode IN ('hard', 'soft', 'unbounded')),
    overdraft_limit      u128        NOT NULL DEFAULT 0,
    overdraft_account_id uuid,
    fall_through         boolean     NOT NULL DEFAULT false,
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (resource_id, credit_type_id),
    UNIQUE (id, credit_type_id),
    CHECK (overdraft_mode = 'soft' OR overdraft_limit = 0),
    CHECK (overdraft_mode <> 'soft' OR overdraft_limit > 0),
    CHECK (overdraft_mode = 'hard' OR overdraft_account_id IS NOT NULL)
);

-- A grant is a credit block; its id is its TigerBeetle account id (the operation id of the call
-- that issued it). The composite foreign key keeps its credit type equal to its wallet's.
-- state: 'pending' until its account and funding transfer exist in TigerBeetle, then 'active';
-- 'voided' after a void. expires_at is exclusive.
CREATE TABLE grants (
    id                  uuid        PRIMARY KEY,
    wallet_id           uuid        NOT NULL,
    credit_type_id      bigint      NOT NULL,
    amount              u128        NOT NULL CHECK (amount > 0),
    category            text        NOT NULL CHECK (category IN ('paid', 'promotional')),
    consideration_minor bigint      NOT NULL DEFAULT 0 CHECK (consideration_minor >= 0),
    currency            char(3)     CHECK (currency ~ '^[A-Z]{3}$'),
    priority            integer     NOT NULL DEFAULT 0,
    effective_at        timestamptz NOT NULL,
    expires_at          timestamptz,
    source              text        NOT NULL
        CHECK (source IN ('admin', 'purchase', 'plan_allocation', 'rollover')),
    reason              text,
    actor               text        NOT NULL CHECK (actor <> ''),
    external_ref        text,
    state               text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'active', 'voided')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (wallet_id, credit_type_id) REFERENCES wallets (id, credit_type_id),
    CHECK (expires_at IS NULL OR expires_at > effective_at),
    CHECK (category <> 'paid' OR currency IS NOT NULL),
    CHECK (consideration_minor = 0 OR currency IS NOT NULL)
);
CREATE INDEX grants_wallet_id_idx ON grants (wallet_id);
-- The expiry sweep looks for active grants past their expiry.
CREATE INDEX grants_active_expires_at_idx ON grants (expires_at)
    WHERE state = 'active' AND expires_at IS NOT NULL;
-- Reconciliation looks for grants whose dual write has not finished.
CREATE INDEX grants_pending_created_at_idx ON grants (created_at) WHERE state = 'pending';

-- A spending cap per resource, credit type and period; at most one active budget of a period.
CREATE TABLE budgets (
    id             uuid        PRIMARY KEY,
    resource_id    uuid        NOT NULL REFERENCES resources (id),
    credit_type_id bigint      NOT NULL REFERENCES credit_types (id),
    period         text        NOT NULL CHECK (period IN ('day', 'week', 'month', 'lifetime')),
    cap            u128        NOT NULL CHECK (cap > 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    active         boolean     NOT NULL DEFAULT true
);
CREATE UNIQUE INDEX budgets_one_active_per_period_idx
    ON budgets (resource_id, credit_type_id, period) WHERE active;

-- The price catalog: credits (in units of the credit type's scale) per unit of a feature.
CREATE TABLE prices (
    id               uuid        PRIMARY KEY,
    feature          text        NOT NULL CHECK (feature <> ''),
    credit_type_id   bigint      NOT NULL REFERENCES credit_types (id),
    credits_per_unit u128        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (feature, credit_type_id)
);

-- Idempotency of admin operations: one record per (tenant, key), the request's hash, and the
-- stored outcome once the operation completed. The hot path keeps its idempotency in
-- TigerBeetle instead (ledger/README.md).
CREATE TABLE idempotency_records (
    tenant       bigint      NOT NULL CHECK (tenant BETWEEN 0 AND 4294967295),
    key          text        NOT NULL CHECK (octet_length(key) BETWEEN 1 AND 255),
    operation    text        NOT NULL CHECK (operation <> ''),
    request_hash bytea       NOT NULL,
    status_code  integer     CHECK (status_code BETWEEN 100 AND 599),
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    PRIMARY KEY (tenant, key),
    CHECK ((completed_at IS NULL) = (status_code IS NULL))
);
CREATE INDEX idempotency_records_created_at_idx ON idempotency_records (created_at);

-- Every admin action: who, when, what, why. Append-only: the triggers below refuse UPDATE,
-- DELETE and TRUNCATE, whoever asks.
CREATE TABLE audit_log (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL CHECK (actor <> ''),
    action      text        NOT NULL CHECK (action <> ''),
    object_type text,
    object_id   uuid,
    reason      text,
    details     jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_object_idx ON audit_log (object_type, object_id, id);

CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- The asynchronous projection of hot-path movements, one row per operation, written in batches
-- after the fact (idempotently: a replayed batch inserts nothing). It has no foreign keys so
-- that a projection batch never fails on the order in which the catalog was written.
CREATE TABLE movements (
    operation_id   uuid        PRIMARY KEY,
    kind           text        NOT NULL CHECK (kind IN (
        'grant', 'debit', 'reserve', 'settle', 'release', 'expire', 'void', 'refund',
        'overdraft', 'repay'
    )),
    wallet_id      uuid        NOT NULL,
    resource_id    uuid        NOT NULL,
    credit_type_id bigint      NOT NULL CHECK (credit_type_id BETWEEN 1 AND 4294967295),
    amount         u128        NOT NULL,
    dimensions     jsonb       NOT NULL DEFAULT '{}',
    effective_at   timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX movements_wallet_idx ON movements (wallet_id, effective_at, operation_id);
CREATE INDEX movements_resource_idx ON movements (resource_id, effective_at, operation_id);

-- Cache invalidation across processes: every change to a catalog row the hot path caches
-- notifies '<table>:<id>' on channel catalog_changed (ledger/notify.py listens).
CREATE FUNCTION notify_catalog_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed_id text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed_id := OLD.id::text;
    ELSE
        changed_id := NEW.id::text;
    END IF;
    PERFORM pg_notify('catalog_changed', TG_TABLE_NAME || ':' || changed_id);
    RETURN NULL;
END
$$;
CREATE TRIGGER credit_types_notify AFTER INSERT OR UPDATE OR DELETE ON credit_types
    FOR EACH ROW EXECUTE FUNCTION notify_catalog_changed();
CREATE TRIGGER customers_notify AFTER INSERT OR UPDATE OR DELETE ON customers
    FOR EACH ROW EXECUTE FUNCTION notify_catalog_changed();
CREATE TRIGGER resources_notify AFTER INSERT OR UPDATE OR DELETE ON resources
    FOR EACH ROW EXECUTE FUNCTION notify_catalog_changed();
CREATE TRIGGER wallets_notify AFTER INSERT OR UPDATE OR DELETE ON wallets
    FOR EACH ROW EXECUTE FUNCTION notify_catalog_changed();
CREATE TRIGGER grants_notify AFTER INSERT OR UPDATE OR DELETE ON grants
    FOR EACH ROW EXECUTE FUNCTION notify_catalog_changed();
CREATE TRIGGER budgets_notify AFTER INSERT OR UPDATE OR DELETE ON budgets
    FOR EACH ROW EXECUTE FUNCTION notify_catalog_changed();
CREATE TRIGGER prices_notify AFTER INSERT OR UPDATE OR DELETE ON prices
    FOR EACH ROW EXECUTE FUNCTION notify_catalog_changed();
