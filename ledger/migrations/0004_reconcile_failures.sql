-- 0004: what reconciliation could not finish, kept for an operator to see and resolve.
--
-- Reconciliation (wallets/control.py, `ControlPlane.reconcile`) finishes the dual writes a crash
-- interrupted. An object it cannot finish (the engine refuses it: only bad data written before
-- the range checks of the API could do that) is recorded here, never raised: one bad row must
-- not stop the other rows, the jobs, or the service's start. `credit-ledger reconcile` lists the
-- open ones; an operator resolves a grant that can never reach the ledger with
-- `credit-ledger reconcile --abandon-grant ID --reason ...`, which makes it 'abandoned'.
--
-- object_id: the object's id as text (UUID text, or the ledger number of a credit type).
CREATE TABLE reconcile_failures (
    kind            text        NOT NULL CHECK (
        kind IN ('credit_type', 'wallet', 'wallet_change', 'budget', 'grant')
    ),
    object_id       text        NOT NULL CHECK (object_id <> ''),
    error           text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    resolution      text,
    PRIMARY KEY (kind, object_id),
    CHECK ((resolved_at IS NULL) = (resolution IS NULL))
);
CREATE INDEX reconcile_failures_open_idx ON reconcile_failures (last_failed_at)
    WHERE resolved_at IS NULL;

-- 'abandoned': a grant an operator gave up on; it never reached the ledger and never will.
ALTER TABLE grants DROP CONSTRAINT grants_state_check;
ALTER TABLE grants ADD CONSTRAINT grants_state_check
    CHECK (state IN ('pending', 'active', 'voided', 'expired', 'abandoned'));
