-- 0012: plans and recurring allocations (issue 12).
--
-- A plan is a catalog entry: per credit type, one allocation rule (N credits every `count`
-- units of a period; paid or promotional, with a cost basis; a priority; an expiry in periods;
-- a rollover policy handed to the grant). Plans and their rules are never changed once
-- created: an allocation's meaning stays what it was when it was issued.
--
-- A subscription puts a resource on a plan from an anchor. Period k of a rule runs from
-- start(k) to start(k+1), each start computed from the anchor (wallets/plan_periods.py), with
-- month-end anchoring: a subscription anchored on Jan 31 renews on Feb 28 (29), Mar 31, ...
--
-- An allocation is one row per (subscription, rule, period index, seq): seq 0 is the period's
-- own allocation, seq n > 0 the adjustment of the n-th change of plan in that period (credits
-- granted, or voided from the period's block). The unique key makes each allocation happen
-- once, however late and however many schedulers run. The dual write (wallets/plans.py):
-- 1. one transaction: the row 'pending' with its derived grant id (and the subscription's
--    next due time moved on);
-- 2. TigerBeetle through ControlPlane.issue_grant (key derived from the row) or void_grant;
-- 3. one transaction: the row 'done' and the `allocation.issued` event.
-- A crash after 1 leaves a pending row: the next tick runs 2 and 3 again (both idempotent).
CREATE TABLE plans (
    id         uuid        PRIMARY KEY,
    code       text        NOT NULL UNIQUE CHECK (code ~ '^[a-z][a-z0-9_]{0,63}$'),
    name       text        NOT NULL CHECK (name <> ''),
    -- A change of plan in the middle of a period: true, the difference is prorated by the
    -- fraction of the period left; false, the whole difference. The NEW plan's setting decides.
    prorate    boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE plan_rules (
    id                  uuid        PRIMARY KEY,
    plan_id             uuid        NOT NULL REFERENCES plans (id),
    credit_type_id      bigint      NOT NULL REFERENCES credit_types (id),
    amount              u128        NOT NULL CHECK (amount > 0),
    period_unit         text        NOT NULL CHECK (period_unit IN ('day', 'week', 'month', 'year')),
    period_count        integer     NOT NULL CHECK (period_count BETWEEN 1 AND 1000),
    category            text        NOT NULL CHECK (category IN ('paid', 'promotional')),
    -- The cost basis of one allocation (what the customer pays per period), in `currency`.
    consideration_minor bigint      NOT NULL DEFAULT 0 CHECK (consideration_minor >= 0),
    currency            char(3)     CHECK (currency ~ '^[A-Z]{3}$'),
    priority            integer     NOT NULL DEFAULT 0,
    -- The allocation expires at the end of this many periods (1: the end of its own period).
    expiry_periods      integer     NOT NULL DEFAULT 1 CHECK (expiry_periods BETWEEN 1 AND 1000),
    -- Rollover: carried = min(max, max(min, remaining)) at the block's expiry; NULL max: none.
    rollover_min        u128,
    rollover_max        u128,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (plan_id, credit_type_id),
    CHECK (category <> 'paid' OR currency IS NOT NULL),
    CHECK (consideration_minor = 0 OR currency IS NOT NULL),
    CHECK (rollover_max IS NOT NULL OR rollover_min IS NULL),
    CHECK (rollover_min IS NULL OR rollover_min <= rollover_max)
);
CREATE INDEX plan_rules_plan_idx ON plan_rules (plan_id);

CREATE TABLE subscriptions (
    id             uuid        PRIMARY KEY,
    resource_id    uuid        NOT NULL REFERENCES resources (id),
    plan_id        uuid        NOT NULL REFERENCES plans (id),
    -- Where every period of every rule is counted from (the subscription's start).
    anchor_at      timestamptz NOT NULL,
    -- Periods that start before this get no regular allocation: moved by a change of plan
    -- (the new plan's periods start after it) and by a resume (periods that started while
    -- paused are skipped).
    allocate_from  timestamptz NOT NULL,
    -- Since when it has been receiving allocations without a break: the anchor, or the last
    -- resume. A change of plan grants the new plan's part of a period only if that period
    -- started since then.
    live_from      timestamptz NOT NULL,
    state          text        NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'paused', 'cancelled')),
    -- How many changes of plan it has had (the seq of the next change's adjustments).
    changes        integer     NOT NULL DEFAULT 0 CHECK (changes >= 0),
    -- The start of the earliest period not yet allocated (NULL: none to come); the job reads
    -- active subscriptions by it.
    next_due_at    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    paused_at      timestamptz,
    cancelled_at   timestamptz,
    CHECK (allocate_from >= anchor_at AND live_from >= anchor_at),
    CHECK ((state = 'paused') = (paused_at IS NOT NULL)),
    CHECK ((state = 'cancelled') = (cancelled_at IS NOT NULL))
);
-- One live (active or paused) subscription of a plan per resource: a second would allocate
-- the same credits twice. Refused as 409 already_subscribed (wallets/plans.py), on subscribe
-- and on a change of plan; a cancelled one blocks nothing.
CREATE UNIQUE INDEX subscriptions_one_live_per_plan_idx ON subscriptions (resource_id, plan_id)
    WHERE state <> 'cancelled';
CREATE INDEX subscriptions_due_idx ON subscriptions (next_due_at) WHERE state = 'active';
-- GET /v1/subscriptions, in (created_at, id) order: all, of a resource, of a plan.
CREATE INDEX subscriptions_created_at_idx ON subscriptions (created_at, id);
CREATE INDEX subscriptions_resource_created_at_idx ON subscriptions (resource_id, created_at, id);
CREATE INDEX subscriptions_plan_created_at_idx ON subscriptions (plan_id, created_at, id);

CREATE TABLE plan_allocations (
    id               uuid        PRIMARY KEY,
    subscription_id  uuid        NOT NULL REFERENCES subscriptions (id),
    rule_id          uuid        NOT NULL REFERENCES plan_rules (id),
    credit_type_id   bigint      NOT NULL REFERENCES credit_types (id),
    period_index     integer     NOT NULL CHECK (period_index >= 0),
    seq              integer     NOT NULL DEFAULT 0 CHECK (seq >= 0),
    kind             text        NOT NULL CHECK (kind IN ('period', 'change')),
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    effective_at     timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    -- Credits granted (the block `grant_id`), 0 when this row grants nothing.
    amount           u128        NOT NULL DEFAULT 0,
    grant_id         uuid,
    -- The cost basis of the block granted (the rule's per allocation; prorated for a change).
    consideration_minor bigint   NOT NULL DEFAULT 0 CHECK (consideration_minor >= 0),
    -- Credits to void from an earlier block of the period (`void_grant_id`), for a change.
    voided           u128        NOT NULL DEFAULT 0,
    void_grant_id    uuid,
    state            text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    done_at          timestamptz,
    UNIQUE (subscription_id, rule_id, period_index, seq),
    CHECK (period_end > period_start AND expires_at >= period_end),
    CHECK ((amount > 0) = (grant_id IS NOT NULL)),
    CHECK ((voided > 0) = (void_grant_id IS NOT NULL)),
    CHECK (kind = 'change' OR (seq = 0 AND amount > 0 AND voided = 0)),
    CHECK ((state = 'done') = (done_at IS NOT NULL))
);
CREATE INDEX plan_allocations_pending_idx ON plan_allocations (created_at) WHERE state = 'pending';
CREATE INDEX plan_allocations_subscription_idx
    ON plan_allocations (subscription_id, period_start);
