-- 0014: alerts derived from the projection, and automatic top-ups (issue 12).
--
-- The hot path never writes Postgres, so balance crossings are derived from the projection
-- (`ledger_entries`) by the alerts deriver (wallets/alerts.py): it reads the entries after its
-- own watermark (engine time) up to the projection's, keeps each wallet's available credits and
-- deficit and each budget period's usage, and writes, in ONE transaction with its new
-- watermark, the events (`events`, migration 0011) and the top-ups those crossings cause.
-- Event ids derive from the cause (a transfer, a threshold and its crossing number), so a
-- replayed batch writes nothing twice.

-- Where the deriver stands: the engine timestamp of the last entry it read (0: none). Its row
-- lock serializes two derivers: the second waits, then finds the watermark moved.
CREATE TABLE alerts_state (
    name         text        PRIMARY KEY CHECK (name = 'alerts'),
    watermark_ts bigint      NOT NULL CHECK (watermark_ts >= 0),
    entries      bigint      NOT NULL DEFAULT 0 CHECK (entries >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- It starts where the projection stands: the history before it is not announced (each wallet's
-- and budget period's figures are summed from the entries before the watermark the first time
-- the deriver meets it).
INSERT INTO alerts_state (name, watermark_ts)
    SELECT 'alerts', watermark_ts FROM projection_state WHERE name = 'ledger';

-- Each wallet's figures as of the deriver's watermark: `available` = sum over its blocks of
-- (posted - held) (blocks not yet effective included, expired ones until their sweep), the
-- `deficit` on its overdraft accounts (draws, held ones included, less repays and refunds; a
-- bounded account's limit is no repay). `depletions` and `overdrafts` count the crossings to
-- zero and into deficit so far: the keys of their events.
CREATE TABLE alert_wallets (
    wallet_id   uuid          PRIMARY KEY,
    available   numeric(40,0) NOT NULL DEFAULT 0,
    deficit     numeric(40,0) NOT NULL DEFAULT 0,
    depletions  bigint        NOT NULL DEFAULT 0,
    overdrafts  bigint        NOT NULL DEFAULT 0,
    updated_at  timestamptz   NOT NULL DEFAULT now()
);

-- Each budget period's account (ids: ledger.ids.budget_account_id; its owner and period read
-- once from the engine's account): the limit credited to it (`BUDGET_LIMIT`), and its balance
-- (posted - held). Used = limit - balance. `exceedings` counts the times the cap was used up.
CREATE TABLE alert_budget_periods (
    account_id      uuid          PRIMARY KEY,
    budget_id       uuid          NOT NULL,
    period_start_ns bigint        NOT NULL,
    credit_limit    numeric(40,0) NOT NULL DEFAULT 0,
    balance         numeric(40,0) NOT NULL DEFAULT 0,
    exceedings      bigint        NOT NULL DEFAULT 0,
    updated_at      timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX alert_budget_periods_budget_idx ON alert_budget_periods (budget_id);

-- Thresholds: a wallet's (an absolute number of credits, or a percentage of its last plan
-- allocation: the latest grant with source 'plan_allocation' in the wallet; none while there is
-- none), or a budget's (a percentage of each period's cap). `removed_at`: deleted (kept: its id
-- names the events it caused).
CREATE TABLE alert_thresholds (
    id         uuid          PRIMARY KEY,
    wallet_id  uuid          REFERENCES wallets (id),
    budget_id  uuid          REFERENCES budgets (id),
    amount     numeric(40,0) CHECK (amount > 0),
    percent    integer       CHECK (percent BETWEEN 1 AND 1000),
    actor      text          NOT NULL CHECK (actor <> ''),
    created_at timestamptz   NOT NULL DEFAULT now(),
    removed_at timestamptz,
    CHECK ((wallet_id IS NULL) <> (budget_id IS NULL)),
    CHECK ((amount IS NULL) <> (percent IS NULL)),
    CHECK (budget_id IS NULL OR (percent IS NOT NULL AND percent <= 100))
);
CREATE INDEX alert_thresholds_wallet_idx ON alert_thresholds (wallet_id) WHERE removed_at IS NULL;
CREATE INDEX alert_thresholds_budget_idx ON alert_thresholds (budget_id) WHERE removed_at IS NULL;

-- Where each threshold stands on its subject (the wallet, or a budget period's account):
-- `armed` until it fires, armed again once the figure is back on the safe side; `crossings`
-- counts its firings (the key of its events).
CREATE TABLE alert_threshold_marks (
    threshold_id uuid    NOT NULL REFERENCES alert_thresholds (id),
    subject_id   uuid    NOT NULL,
    armed        boolean NOT NULL DEFAULT true,
    crossings    bigint  NOT NULL DEFAULT 0 CHECK (crossings >= 0),
    PRIMARY KEY (threshold_id, subject_id)
);

-- The automatic top-up rule of a wallet (one per wallet; a DELETE disables it, a PUT enables
-- it again: `crossings` goes on counting, so that top-up ids never repeat).
CREATE TABLE top_up_rules (
    wallet_id           uuid          PRIMARY KEY REFERENCES wallets (id),
    threshold           numeric(40,0) NOT NULL CHECK (threshold > 0),
    amount              numeric(40,0) NOT NULL CHECK (amount > 0),
    consideration_minor bigint        NOT NULL CHECK (consideration_minor >= 0),
    currency            char(3)       NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    priority            integer       NOT NULL DEFAULT 0,
    expires_in_days     integer       CHECK (expires_in_days > 0),
    daily_max           integer       NOT NULL CHECK (daily_max > 0),
    enabled             boolean       NOT NULL DEFAULT true,
    armed               boolean       NOT NULL DEFAULT true,
    crossings           bigint        NOT NULL DEFAULT 0 CHECK (crossings >= 0),
    actor               text          NOT NULL CHECK (actor <> ''),
    created_at          timestamptz   NOT NULL DEFAULT now(),
    updated_at          timestamptz   NOT NULL DEFAULT now()
);

-- One row per crossing of a rule: 'pending' (written by the deriver in its transaction), then
-- 'issued' with its grant (issued through the control plane, key derived from the top-up's id,
-- and `top_up.issued` emitted in the transaction that records it), or 'capped' at once when the
-- wallet's UTC day already has `daily_max` top-ups (no grant), or 'refused' (with `refusal`)
-- when the control plane refuses its grant (the wallet's catalog changed under it). Terms are copied from the rule
-- at the crossing. Never deleted.
CREATE TABLE top_ups (
    id                  uuid          PRIMARY KEY,
    wallet_id           uuid          NOT NULL REFERENCES wallets (id),
    crossing            bigint        NOT NULL CHECK (crossing > 0),
    state               text          NOT NULL
        CHECK (state IN ('pending', 'issued', 'capped', 'refused')),
    threshold           numeric(40,0) NOT NULL,
    amount              numeric(40,0) NOT NULL CHECK (amount > 0),
    consideration_minor bigint        NOT NULL,
    currency            char(3)       NOT NULL,
    priority            integer       NOT NULL,
    expires_at          timestamptz,
    crossed_at          timestamptz   NOT NULL,
    day                 date          NOT NULL,
    transfer_id         uuid          NOT NULL,
    grant_id            uuid,
    created_at          timestamptz   NOT NULL DEFAULT now(),
    issued_at           timestamptz,
    refusal             text,
    UNIQUE (wallet_id, crossing),
    CHECK ((state = 'issued') = (grant_id IS NOT NULL)),
    CHECK ((state = 'refused') = (refusal IS NOT NULL))
);
CREATE INDEX top_ups_pending_idx ON top_ups (created_at) WHERE state = 'pending';
CREATE INDEX top_ups_wallet_day_idx ON top_ups (wallet_id, day);
CREATE INDEX top_ups_wallet_list_idx ON top_ups (wallet_id, created_at, id);

-- The expiring scan's record of the notices it gave: one per block and expiry, so that a
-- changed expiry notifies again.
CREATE TABLE grant_expiry_notices (
    grant_id    uuid        NOT NULL,
    expires_at  timestamptz NOT NULL,
    credits     numeric(40,0) NOT NULL,
    notified_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (grant_id, expires_at)
);
