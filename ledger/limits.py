"""Every limit of the project, in one place, with asserts on how they relate.

Units are last in names (TIGER_STYLE). A limit that the engine shares with TigerBeetle has the
same value as TigerBeetle's, so that a request the embedded engine accepts is one a real cluster
accepts too.
"""

from __future__ import annotations

# TigerBeetle's largest batch: a 1 MiB message body holds 8189 events of 128 bytes after the
# multi-batch trailer. Lookups and query results are bounded the same way.
BATCH_EVENTS_MAX = 8189

# Largest value of the u128 / u64 / u32 / u16 fields.
U128_MAX = (1 << 128) - 1
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
U16_MAX = (1 << 16) - 1

# Cluster timestamps are u63: the top bit of the u64 is TigerBeetle's tombstone flag.
TIMESTAMP_MIN = 1
TIMESTAMP_MAX = (1 << 63) - 1

# Business times (a grant's effective_at and expires_at, an operation's effective time) travel on
# the ledger in the u64 `user_data_64`, as nanoseconds since the Unix epoch: from
# 1970-01-01T00:00:00Z up to 2^64-1 ns (2554-07-21T23:34:33.709551615Z). A time outside is
# refused before anything is written, since the engine could never record it.
BUSINESS_TIME_NS_MIN = 0
BUSINESS_TIME_NS_MAX = U64_MAX

# Money is integer minor units in a Postgres bigint.
MONEY_MINOR_MAX = (1 << 63) - 1

# A block's exchange rate at receipt (units of the functional currency per unit of its own), a
# decimal string: at most this many significant digits and decimal places (a Postgres numeric).
EXCHANGE_RATE_DIGITS_MAX = 12
EXCHANGE_RATE_PLACES_MAX = 10
# Its characters on the wire: the digits, a decimal point and leading or trailing zeros.
EXCHANGE_RATE_CHARS_MAX = 32

# A pending transfer's timeout is a u32 of seconds.
PENDING_TIMEOUT_S_MAX = U32_MAX

# A request toward a real cluster that has not answered within this deadline is an unknown
# outcome: the caller retries with the same ids.
CLUSTER_REQUEST_DEADLINE_S_DEFAULT = 5.0

# The embedded engine checkpoints its newest transfers into its history store after this many
# journal bytes, so that start-up replays at most this much (about 250,000 transfers, under 2 s
# on a 2-core machine) and memory holds at most two such layers of transfers.
JOURNAL_SNAPSHOT_BYTES_DEFAULT = 32 * 1024 * 1024
# One journal record holds one request; a batch of BATCH_EVENTS_MAX transfers encodes to about
# 1.3 MB, well under this bound, and a record claiming more is corrupt.
JOURNAL_RECORD_BYTES_MAX = 16 * 1024 * 1024
# The history store's block cache (RocksDB's: data blocks, indexes and bloom filters), the bound
# on the memory the engine's history takes whatever its size.
ENGINE_CACHE_BYTES_DEFAULT = 64 * 1024 * 1024
# The history store's filter of ids (a Bloom filter, ledger/embedded/store.py): 2^28 bits, 32
# MiB of memory, known to be new for about 99 % of new ids up to 20 million ids in the store.
ID_FILTER_BITS_LOG2_DEFAULT = 28
# Transfers read ahead from the history store and kept for the requests after: emptied past
# this many (a batch reads at most 2 * BATCH_EVENTS_MAX).
CACHE_TRANSFERS_MAX = 65_536

# The engine process (`ledger.embedded.process`) has this long to replay its journal and say
# that it is ready; a snapshot bounds the replay, so this is far more than it needs.
ENGINE_START_TIMEOUT_S = 600.0
# A dead engine process is started again by its supervisor (`ledger.embedded.supervisor`): the
# first time at once, then after a pause that doubles from the shortest to the longest, so that
# a directory still locked or an engine that dies as it starts costs little.
ENGINE_RESTART_PAUSE_S_MIN = 0.05
ENGINE_RESTART_PAUSE_S_MAX = 5.0
# An engine that ran this long before it died ran well: its restart starts the count afresh.
# One that died sooner adds to the count, so a crash loop backs off too.
ENGINE_RUN_STABLE_S = 60.0
# After this many restart attempts without an engine that ran well, /healthz fails: the
# service cannot recover by itself, and an outside supervisor should restart it (it goes on
# trying meanwhile).
ENGINE_RESTART_ATTEMPTS_MAX = 10
# An engine process that lost its connection but has not exited after this long is killed:
# its journal lock goes with it only once it has exited.
ENGINE_EXIT_GRACE_S = 5.0

# A spend path: at most this many accounts to draw from (grants in burn order, the parent's when
# the wallet falls through, the overdraft) and this many budgets (one per resource on the path).
PATH_SOURCES_MAX = 64
PATH_BUDGETS_MAX = 8
# Events of one drain chain: header, normalize, set-up, check, then budgets and sources.
CHAIN_LEGS_MAX = 4 + PATH_BUDGETS_MAX + PATH_SOURCES_MAX
# A settle resolves reservation leg i with its own leg i; its overage legs start here.
SETTLE_LEG_INDEX = 0
OVERAGE_LEG_INDEX = 100

# A credit type's decimal places.
ASSET_SCALE_MAX = 18

# Amounts a caller may ask for: 1 .. 2^63-1 (they travel as JSON integers).
AMOUNT_MAX_REQUEST = (1 << 63) - 1

# Dimensions a spend may carry (feature, model, session, user, ...), kept on its movement.
DIMENSIONS_MAX = 16
DIMENSION_NAME_CHARS_MAX = 64
DIMENSION_VALUE_CHARS_MAX = 256

# Lists of the API (customers, resources, wallets, grants, reservations, budgets, prices): rows
# per page when the caller does not say, and at most; a cursor is at most this many characters.
LIST_PAGE_ROWS_DEFAULT = 100
LIST_PAGE_ROWS_MAX = 1000
LIST_CURSOR_CHARS_MAX = 200
# A list of reservations reads the engine: at most this many set-up legs are examined for one
# page, so a status filter that matches little still answers in bounded time (with a cursor to
# go on from).
RESERVATIONS_SCANNED_PER_PAGE_MAX = 2000

# Usage (GET /v1/usage, `credit-ledger usage`): read from the rollups of the projection, never
# from its entries, and bounded in what one answer may cover. A range holds at most
# USAGE_BUCKETS_MAX time buckets (1,000 hours is 41 days; 1,000 days 2.7 years) and spans at
# most USAGE_RANGE_DAYS_MAX days. A range on whole UTC days is read from the day rollups; any
# other is read from the hour rollups (the finest grain, so `from` and `to` fall on whole UTC
# hours), which hold 24 times as many rows: such a range spans at most USAGE_HOUR_GRAIN_DAYS_MAX.
USAGE_BUCKETS_MAX = 1000
USAGE_RANGE_DAYS_MAX = 1830
USAGE_HOUR_GRAIN_DAYS_MAX = 92
# What one query may group by (resource, wallet, customer, credit_type and dimensions) and how
# many dimension filters (`dimension=NAME:VALUE`) it may carry.
USAGE_GROUP_BY_FIELDS_MAX = 8
USAGE_GROUP_BY_CHARS_MAX = 1024
USAGE_DIMENSION_FILTERS_MAX = 16

# Reservations: default and longest timeout.
RESERVATION_TIMEOUT_S_DEFAULT = 3600
RESERVATION_TIMEOUT_S_MAX = 24 * 3600

# A debit's or a settle's `occurred_at` (when the service was delivered, the business effective
# time of its legs) lies in [now - OCCURRED_AT_AGE_S_MAX, now + OCCURRED_AT_SKEW_S_MAX] by the
# service's clock. Finance closes monthly: 35 days lets the last days of a 31-day month arrive
# during the first days of the next one, before its close; older usage belongs to a period that
# is closed or about to be, and is refused rather than booked where nobody looks. The skew lets
# a caller whose clock runs a little ahead of the service's stamp "now" without a refusal.
OCCURRED_AT_AGE_S_MAX = 35 * 24 * 3600
OCCURRED_AT_SKEW_S_MAX = 5 * 60

# A test clock (`serve --test-clock`) moves at most this far in one advance: a year and a month,
# so that a sandbox sees a yearly plan renew in one call; each advance sweeps once, at its end.
TEST_CLOCK_ADVANCE_S_MAX = 400 * 24 * 3600

# Reconciliation of the projection (wallets/reconcile_projection.py). A run reads at most this
# many of the engine's transfers after the last clean range (a long history takes several runs);
# it keeps what it tells of each difference for this many of each kind (all are counted); and it
# has at most this many balance reads in flight toward the engine.
PROJECTION_CHECK_TRANSFERS_MAX = 1_000_000
PROJECTION_CHECK_EXAMPLES_MAX = 20
PROJECTION_CHECK_READS_IN_FLIGHT_MAX = 64
# A pending leg whose timeout falls this close before an account's transfer may not yet have
# been released by the engine when that transfer was applied (TigerBeetle expires pending
# transfers between requests, not between the events of one): see ledger/README.md,
# "Reconciliation of the projection".
PROJECTION_CHECK_EXPIRY_WINDOW_NS = 1_000_000_000

# HTTP. A request body larger than this is refused with 413 before it is read whole.
REQUEST_BODY_BYTES_MAX = 1024 * 1024

# The HTTP server's limits (api/server.py): what a connection may cost before a request reaches the
# app. uvicorn's httptools protocol has none of them: it buffered a 64 MB header whole, and kept
# connections that never finished a request open forever.
#
# A request line and its headers: refused with 431 past this, without buffering the rest. The
# API reads three headers (the bearer key, an Idempotency-Key, the content type); 16 KiB is
# also uvicorn's h11 default and Node's.
HTTP_HEADER_BYTES_MAX = 16 * 1024
HTTP_HEADERS_MAX = 100  # 431 past this many header lines (Apache's LimitRequestFields)
# From a connection's start, or a request's first byte, until its headers are complete: a client
# that sends nothing, or trickles its headers, is closed (408 when it had begun a request).
HTTP_HEADER_TIMEOUT_S = 10.0
# From the end of the headers until the end of the body: a client that trickles its body is
# closed. The whole of a largest body in this time is 35 KB/s (a 280 kbit/s link).
HTTP_BODY_TIMEOUT_S = 30.0
# What a request may send after its headers (its body as sent: with a chunked body's framing and
# trailers) before the connection is closed. The app refuses a body over REQUEST_BODY_BYTES_MAX
# (413), but trailers are headers, which httptools buffers whole: this bounds them.
HTTP_BODY_WIRE_BYTES_MAX = 2 * REQUEST_BODY_BYTES_MAX
# An idle keep-alive connection is closed after this. Longer than the idle expiry of client
# pools (httpx: 5 s), so that the server rarely closes a connection a client is about to reuse.
HTTP_KEEP_ALIVE_TIMEOUT_S = 15
# Open connections at most; a connection past this is answered 503 and closed at once, the
# established ones unaffected. Each costs a file descriptor (the server raises its soft limit to
# fit, api.server) and a few KB; wrk in bench.http uses 64.
HTTP_CONNECTIONS_MAX = 1000
# Connections the kernel queues before the server accepts them (listen(2)'s backlog, uvicorn's
# default; Linux caps it at net.core.somaxconn).
HTTP_BACKLOG_CONNECTIONS_MAX = 2048
# A stopping server waits this long for the requests in flight, then cancels them: with the
# engine, the pool and Postgres closed after it, a stop stays within the 10 s that supervisors
# commonly allow before SIGKILL (Docker's default).
HTTP_SHUTDOWN_TIMEOUT_S = 5

assert 4 * HTTP_HEADERS_MAX <= HTTP_HEADER_BYTES_MAX  # "a:\r\n" is the shortest header line
assert REQUEST_BODY_BYTES_MAX / HTTP_BODY_TIMEOUT_S <= 64 * 1024
assert HTTP_HEADER_TIMEOUT_S <= HTTP_BODY_TIMEOUT_S
assert REQUEST_BODY_BYTES_MAX + HTTP_HEADER_BYTES_MAX <= HTTP_BODY_WIRE_BYTES_MAX
assert HTTP_KEEP_ALIVE_TIMEOUT_S > 5
assert HTTP_SHUTDOWN_TIMEOUT_S < 10

assert CHAIN_LEGS_MAX < OVERAGE_LEG_INDEX
assert OVERAGE_LEG_INDEX + CHAIN_LEGS_MAX < 2 * OVERAGE_LEG_INDEX
assert 2 * CHAIN_LEGS_MAX + 2 <= BATCH_EVENTS_MAX
assert RESERVATION_TIMEOUT_S_DEFAULT <= RESERVATION_TIMEOUT_S_MAX <= PENDING_TIMEOUT_S_MAX
assert OCCURRED_AT_AGE_S_MAX > 31 * 24 * 3600 and 0 < OCCURRED_AT_SKEW_S_MAX < 3600
assert BATCH_EVENTS_MAX * 128 <= 1024 * 1024
assert TIMESTAMP_MAX < U64_MAX
assert BUSINESS_TIME_NS_MIN == 0 and BUSINESS_TIME_NS_MAX == U64_MAX
assert PENDING_TIMEOUT_S_MAX * 1_000_000_000 < TIMESTAMP_MAX
assert JOURNAL_RECORD_BYTES_MAX < JOURNAL_SNAPSHOT_BYTES_DEFAULT
assert 0 < ENGINE_RESTART_PAUSE_S_MIN <= ENGINE_RESTART_PAUSE_S_MAX < ENGINE_RUN_STABLE_S
assert ENGINE_RESTART_ATTEMPTS_MAX >= 2  # one failed attempt alone is not yet a verdict
# The attempts before /healthz fails span at least one longest pause.
assert ENGINE_RESTART_PAUSE_S_MIN * 2 ** (ENGINE_RESTART_ATTEMPTS_MAX - 2) >= (
    ENGINE_RESTART_PAUSE_S_MAX
)
assert 0 < ENGINE_EXIT_GRACE_S < ENGINE_START_TIMEOUT_S
assert 1 <= LIST_PAGE_ROWS_DEFAULT <= LIST_PAGE_ROWS_MAX <= RESERVATIONS_SCANNED_PER_PAGE_MAX
assert RESERVATIONS_SCANNED_PER_PAGE_MAX <= BATCH_EVENTS_MAX
assert BATCH_EVENTS_MAX <= PROJECTION_CHECK_TRANSFERS_MAX
assert 1 <= PROJECTION_CHECK_READS_IN_FLIGHT_MAX <= BATCH_EVENTS_MAX
assert 0 < PROJECTION_CHECK_EXPIRY_WINDOW_NS < RESERVATION_TIMEOUT_S_DEFAULT * 1_000_000_000
assert 24 * USAGE_HOUR_GRAIN_DAYS_MAX >= USAGE_BUCKETS_MAX  # every hour-bucket range fits
assert USAGE_HOUR_GRAIN_DAYS_MAX <= USAGE_RANGE_DAYS_MAX
assert USAGE_BUCKETS_MAX <= USAGE_RANGE_DAYS_MAX  # a range of day buckets hits the bucket limit
assert 4 < USAGE_GROUP_BY_FIELDS_MAX <= 4 + DIMENSIONS_MAX  # the builtins, and some dimensions
assert USAGE_GROUP_BY_FIELDS_MAX * (len("dimension:") + DIMENSION_NAME_CHARS_MAX + 1) <= (
    USAGE_GROUP_BY_CHARS_MAX
)
assert USAGE_DIMENSION_FILTERS_MAX >= DIMENSIONS_MAX  # one filter per dimension a spend carries

# Rollover (wallets/control.py, ControlPlane.roll_over_due): the most blocks one pass rolls
# over (each: two transactions and one engine round trip); the next tick goes on.
ROLLOVER_BATCH_MAX = 100
# Attempts of one block's rollover: an attempt the engine refuses (a spend dated before the
# expiry took credits between the decision and the transfer) is decided again, with ids of its
# own, up to this many times; then the rollover is 'refused' and the block expires as usual.
ROLLOVER_ATTEMPTS_MAX = 3

# Finance (finance/posting.py): the most projected entries one posting batch reads (one
# transaction: its journals, lines, memo rows and block states).
FINANCE_POST_ENTRIES_MAX = 20_000
# The most batches one tick of the job posts; the next tick goes on.
FINANCE_POST_BATCHES_PER_TICK = 50
# The most rows one report or export page returns through the API (finance/reports.py).
FINANCE_REPORT_ROWS_MAX = 10_000

# Alerts (wallets/alerts.py): the most projected entries one batch of the deriver reads (one
# transaction: figures, marks, events, top-ups and its watermark), and the batches per tick.
ALERTS_ENTRIES_MAX = 10_000
ALERTS_BATCHES_PER_TICK = 20
# The most pending top-ups one tick issues (each an admin grant: a few engine round trips).
TOP_UPS_PER_TICK = 64
# Thresholds in force per wallet or budget; top-ups per wallet and UTC day a rule may allow.
THRESHOLDS_PER_SUBJECT_MAX = 16
TOP_UPS_PER_DAY_MAX = 1_000
TOP_UP_EXPIRY_DAYS_MAX = 3_650
# A wallet threshold as a percent of its last plan allocation: up to ten times the allocation.
PERCENT_OF_ALLOCATION_MAX = 1_000
# grant.expiring: the notice window (a block with credits left expiring within it is
# announced once per expiry), and the most blocks one scan announces.
GRANT_EXPIRING_NOTICE_S_DEFAULT = 7 * 86_400
GRANT_EXPIRING_SCAN_MAX = 1_000
assert 16 <= ALERTS_ENTRIES_MAX <= FINANCE_POST_ENTRIES_MAX
assert TOP_UPS_PER_TICK > 0 and 0 < GRANT_EXPIRING_SCAN_MAX <= 10_000

# Webhooks (wallets/webhooks.py, wallets/webhook_delivery.py, migration 0013).
# Endpoints at most (every fan-out reads them all), and the event types one may filter on.
WEBHOOK_ENDPOINTS_MAX = 100
WEBHOOK_URL_CHARS_MAX = 2048
WEBHOOK_DESCRIPTION_CHARS_MAX = 500
# The events one fan-out tick takes from the outbox (one transaction).
WEBHOOK_DISPATCH_EVENTS_MAX = 500
# The deliveries one delivery tick leases in all, and per endpoint: the most requests in flight
# to one endpoint (an endpoint with deliveries in flight gets no more until they finish).
WEBHOOK_DELIVERIES_PER_TICK_MAX = 200
WEBHOOK_REQUESTS_PER_ENDPOINT_MAX = 4
# One request's deadline, all of it (connect, send, wait, read): a dead endpoint costs this.
WEBHOOK_REQUEST_TIMEOUT_S = 10.0
# A leased delivery is due again after this long (a sender that crashed after the lease): more
# than a request's deadline plus the time to record its outcome.
WEBHOOK_LEASE_S = 60.0
# Retries: exponential backoff with full jitter, a random wait in 0 .. min(cap, base *
# factor^(n-1)) after the n-th failed attempt; after the last attempt the delivery is 'failed'.
# 8 attempts: waits of at most 2 min, 8 min, 32 min, ~2 h, then 8 h three times: ~27 h in all
# at most, about half that on average.
WEBHOOK_ATTEMPTS_MAX = 8
WEBHOOK_RETRY_BASE_S = 120.0
WEBHOOK_RETRY_FACTOR = 4
WEBHOOK_RETRY_CAP_S = 8 * 3600.0
# What an attempt keeps of the answer and of an error.
WEBHOOK_RESPONSE_EXCERPT_CHARS_MAX = 1024
WEBHOOK_ERROR_CHARS_MAX = 500
# After a rotation the previous secret signs too (a second signature) for this long.
WEBHOOK_SECRET_GRACE_S = 24 * 3600
# The key's random bytes (Standard Webhooks: 24 to 64; `whsec_` + base64).
WEBHOOK_SECRET_BYTES = 32
# A replay of a time range: at most this long a range and this many events.
WEBHOOK_REPLAY_RANGE_DAYS_MAX = 31
WEBHOOK_REPLAY_EVENTS_MAX = 1000

assert WEBHOOK_REQUESTS_PER_ENDPOINT_MAX <= WEBHOOK_DELIVERIES_PER_TICK_MAX
assert WEBHOOK_LEASE_S > 2 * WEBHOOK_REQUEST_TIMEOUT_S
assert 1 < WEBHOOK_ATTEMPTS_MAX <= 16 and 0 < WEBHOOK_RETRY_BASE_S <= WEBHOOK_RETRY_CAP_S
assert 24 <= WEBHOOK_SECRET_BYTES <= 64
assert WEBHOOK_REPLAY_EVENTS_MAX <= LIST_PAGE_ROWS_MAX
assert WEBHOOK_DISPATCH_EVENTS_MAX * WEBHOOK_ENDPOINTS_MAX <= 100_000  # one fan-out's rows
# Plans (wallets/plans.py): allocation rules in one plan (one per credit type at most); the
# most allocations one tick of the job issues (the next tick goes on); the most an admin change
# of a subscription (change of plan, pause, cancel) catches up on before it applies (a
# subscription further behind than that is refused until the job has caught up); the latest
# allocations a subscription's answer shows.
PLAN_RULES_MAX = 16
PLAN_ALLOCATIONS_PER_TICK = 500
PLAN_CATCH_UP_ALLOCATIONS_MAX = 1000
SUBSCRIPTION_ALLOCATIONS_SHOWN_MAX = 100
assert 1 <= PLAN_ALLOCATIONS_PER_TICK <= PLAN_CATCH_UP_ALLOCATIONS_MAX <= LIST_PAGE_ROWS_MAX
assert SUBSCRIPTION_ALLOCATIONS_SHOWN_MAX <= LIST_PAGE_ROWS_MAX
