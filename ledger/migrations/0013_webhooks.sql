-- 0013: webhooks: the endpoints events are delivered to, one delivery per event and endpoint,
-- and the log of every attempt (wallets/webhooks.py, wallets/webhook_delivery.py).
--
-- Fan-out: a tick takes undispatched events (0011, `FOR UPDATE SKIP LOCKED`), inserts one
-- 'pending' delivery per enabled endpoint that wants the event, and marks the events
-- dispatched, all in one transaction: a crash leaves either both or neither.
--
-- Delivery: a tick leases due deliveries (`state = 'pending' AND next_attempt_at <= now`,
-- `FOR UPDATE SKIP LOCKED`) by moving their `next_attempt_at` past the lease, in a transaction
-- of its own; it then sends them and records each outcome (an attempt row, and the delivery
-- 'delivered', 'failed' or due again after a backoff) guarded by the attempt number it leased
-- at: a sender whose lease ran out records nothing twice. A crash after the lease leaves the
-- delivery 'pending': it is due again when the lease runs out (at-least-once).
--
-- A replay is a new delivery of the same event to the same endpoint, with the next `replay`
-- number (0 for the fan-out's): the log keeps the earlier ones as they were.
CREATE TABLE webhook_endpoints (
    id                   uuid        PRIMARY KEY,
    url                  text        NOT NULL
        CHECK (url ~ '^https?://[^[:space:]]+$' AND length(url) <= 2048),
    description          text        NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    -- The event types sent; empty: every type.
    event_types          text[]      NOT NULL DEFAULT '{}',
    -- Only this customer's events when set.
    customer_id          uuid        REFERENCES customers (id),
    enabled              boolean     NOT NULL DEFAULT true,
    -- `whsec_` and the base64 of the key. After a rotation the previous secret signs too (a
    -- second signature) until `previous_secret_until`.
    secret               text        NOT NULL CHECK (secret LIKE 'whsec\_%'),
    previous_secret      text        CHECK (previous_secret LIKE 'whsec\_%'),
    previous_secret_until timestamptz,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    CHECK ((previous_secret IS NULL) = (previous_secret_until IS NULL))
);
CREATE INDEX webhook_endpoints_list_idx ON webhook_endpoints (created_at, id);

CREATE TABLE webhook_deliveries (
    -- ledger.ids.derive_id("webhook_delivery", event, endpoint, replay)
    id              uuid        PRIMARY KEY,
    event_id        uuid        NOT NULL REFERENCES events (id),
    endpoint_id     uuid        NOT NULL REFERENCES webhook_endpoints (id),
    replay          integer     NOT NULL DEFAULT 0 CHECK (replay >= 0),
    state           text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- When it is due (or, while leased, when the lease runs out); null once finished.
    next_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    UNIQUE (event_id, endpoint_id, replay),
    CHECK ((state = 'pending') = (next_attempt_at IS NOT NULL))
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, created_at, id);

CREATE TABLE webhook_attempts (
    delivery_id      uuid        NOT NULL REFERENCES webhook_deliveries (id),
    attempt          integer     NOT NULL CHECK (attempt >= 1),
    at               timestamptz NOT NULL,
    status_code      integer,
    duration_ms      integer     NOT NULL CHECK (duration_ms >= 0),
    error            text,
    -- The first bytes of the answer (ledger.limits.WEBHOOK_RESPONSE_EXCERPT_CHARS_MAX).
    response_excerpt text        CHECK (length(response_excerpt) <= 1024),
    PRIMARY KEY (delivery_id, attempt)
);
