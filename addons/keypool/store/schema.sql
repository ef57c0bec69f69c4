-- keymux state store (SQLite, WAL). Written by the gateway off the hot path (batched,
-- at least once a second); read by the web UI. Times are Unix seconds (UTC).
PRAGMA journal_mode = WAL;

-- One row per client request, with the story of its attempts.
CREATE TABLE IF NOT EXISTS requests (
    id          INTEGER PRIMARY KEY,
    ts          REAL    NOT NULL,   -- when the request arrived
    client      TEXT,               -- client name, NULL on an open gateway
    key         TEXT,               -- key name that gave the final answer (NULL: none did)
    provider    TEXT,
    model       TEXT,
    status      INTEGER NOT NULL,   -- status the client got
    attempts    TEXT    NOT NULL,   -- JSON: [{"key": name, "status": int|null, "error": str|null, "latency_s": float}]
    latency_s   REAL,
    ttfb_s      REAL,
    tokens_in   INTEGER NOT NULL DEFAULT 0,
    tokens_out  INTEGER NOT NULL DEFAULT 0,
    stream      INTEGER NOT NULL DEFAULT 0,
    request_body  TEXT,             -- only with logging.bodies: true, secrets redacted
    response_body TEXT,
    error_code  TEXT,               -- the gateway's own answer: its x-keymux-error (e.g. invalid_client_token)
    error       TEXT,               -- ... and its message (keymux's words, no secret, <= 300 chars)
    path        TEXT,               -- refusals: the path's class (/v1/chat/completions, /v1/*, ...)
    cost_usd    REAL,               -- what the answer cost (keypool.prices); NULL: unknown or none
    gateway     TEXT                -- the process that wrote it: host:pid, host/wN:pid (a worker)
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);

-- Per key, per minute: what the charts and daily totals are made of.
CREATE TABLE IF NOT EXISTS usage_minute (
    key          TEXT    NOT NULL,
    minute       INTEGER NOT NULL,  -- floor(ts / 60)
    provider     TEXT    NOT NULL,
    requests     INTEGER NOT NULL DEFAULT 0,
    successes    INTEGER NOT NULL DEFAULT 0,
    rate_limited INTEGER NOT NULL DEFAULT 0,  -- failures by class
    auth_errors  INTEGER NOT NULL DEFAULT 0,
    server_errors INTEGER NOT NULL DEFAULT 0,
    client_errors INTEGER NOT NULL DEFAULT 0,
    tokens_in    INTEGER NOT NULL DEFAULT 0,
    tokens_out   INTEGER NOT NULL DEFAULT 0,
    latency_sum  REAL    NOT NULL DEFAULT 0,
    PRIMARY KEY (key, minute)
);

-- Spend per day (keypool.periods' day label, in routing.timezone) per key, client,
-- provider and model: what /_keymux/stats' spend, budgets and `keymux report` are made of.
CREATE TABLE IF NOT EXISTS spend_day (
    day         TEXT    NOT NULL,   -- "YYYY-MM-DD": the day's name (it starts at daily_reset)
    key         TEXT    NOT NULL,
    client      TEXT    NOT NULL,   -- "-" on an open gateway
    provider    TEXT    NOT NULL,
    model       TEXT    NOT NULL,   -- as forwarded; "other" past 500 distinct models a day
    usd         REAL    NOT NULL DEFAULT 0,  -- the priced requests' cost
    requests    INTEGER NOT NULL DEFAULT 0,  -- every request counted ...
    unknown     INTEGER NOT NULL DEFAULT 0,  -- ... of which this many had no known price
    tokens_in   INTEGER NOT NULL DEFAULT 0,  -- every input token, cached ones included
    tokens_out  INTEGER NOT NULL DEFAULT 0,
    cache_read  INTEGER NOT NULL DEFAULT 0,
    cache_write INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key, client, provider, model)
);

-- Cooldowns and dead marks that must survive a restart.
CREATE TABLE IF NOT EXISTS key_state (
    key             TEXT PRIMARY KEY,
    fingerprint     TEXT NOT NULL,  -- sha256 of the secret, first 16 hex: state of a changed secret is dropped
    cooldown_until  REAL NOT NULL DEFAULT 0,   -- Unix time; 0 = not cooling
    cooldown_reason TEXT NOT NULL DEFAULT '',  -- rate_limited | quota | auth | server
    model_cooldowns TEXT NOT NULL DEFAULT '{}', -- JSON {model: until}
    failures_in_row INTEGER NOT NULL DEFAULT 0,
    counters        TEXT NOT NULL DEFAULT '{}', -- JSON: lifetime requests, successes, failures by class, tokens, latency
    updated         REAL NOT NULL
);
