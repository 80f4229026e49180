-- llm-proxy: one row per LLM call. PostgreSQL DDL, idempotent: the proxy
-- applies it at start-up (and `psql -f schema.sql` works too).
-- The proxy writes to the table named by its llm_table option: it substitutes
-- that name for every llm_requests below. The embedded SQLite database is made
-- from this same file (types mapped: numeric and timestamps kept as exact text,
-- no partitions); the blocks between "-- [postgresql]" and "-- [end]" are
-- PostgreSQL's only, and lines starting "--sqlite: " are SQLite's instead.
CREATE TABLE IF NOT EXISTS llm_requests (
    id bigserial NOT NULL,                 -- unique (one sequence); SQLite: INTEGER PRIMARY KEY
    request_id text NOT NULL,              -- the proxy's id of the call; replays are idempotent
    ts timestamptz NOT NULL,               -- when the request arrived; the partition key
    duration_ms integer,                   -- request start to last byte (or failure)
    ttft_ms integer,                       -- request start to first response body byte
    provider text,
    api text,                              -- openai-chat, anthropic-messages, gemini-generate, ...
    method text,
    path text,                             -- as the client sent it, secrets masked
    upstream_url text,                     -- where it went, secrets masked
    model text,                            -- as requested
    response_model text,                   -- as answered (often a dated snapshot)
    key_id text,                           -- virtual key name, or fingerprint of the client's key
    streaming boolean,
    status integer,                        -- upstream HTTP status (NULL: no response)
    error text,                            -- HTTP error, mid-stream error or disconnect
    input_tokens integer,                  -- all input, including cache reads and writes
    output_tokens integer,                 -- all output, including reasoning
    total_tokens integer,
    cached_tokens integer,                 -- cache reads
    cache_write_tokens integer,            -- cache writes
    reasoning_tokens integer,
    cost_usd numeric,                      -- NULL when unknown, never a guess
    attempts jsonb,
    fallback_from text,
    request_body jsonb,                    -- 2 KB and more: a reference document; read llm_requests_full
    response_body jsonb,                   -- (the same)
    client_addr text,
    -- A partitioned table's unique constraints must hold its partition key: (id, ts) and
    -- (request_id, ts). A replayed row carries its original ts, so it still conflicts.
    PRIMARY KEY (id, ts),
    UNIQUE (request_id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX IF NOT EXISTS llm_requests_ts_idx ON llm_requests (ts);
CREATE INDEX IF NOT EXISTS llm_requests_key_ts_idx ON llm_requests (key_id, ts);
-- [postgresql]
-- Monthly partitions (llm_requests_pYYYYMM) are created ahead by the writer; the default
-- partition takes any row no month partition covers, so an insert never fails. A table made
-- by an older version (not partitioned) is left as it is: `llm-proxy db migrate` converts it.
DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'llm_requests'::regclass) = 'p' THEN
        CREATE TABLE IF NOT EXISTS llm_requests_default PARTITION OF llm_requests DEFAULT;
    END IF;
END $$;
-- [end]

-- Parts of large bodies (conversation turns, tools, system prompts), each stored once.
CREATE TABLE IF NOT EXISTS llm_requests_bodies (
    hash bytea PRIMARY KEY,                -- BLAKE2b-128 of data (hex in the reference documents)
    data text NOT NULL,                    -- the part's exact JSON text
    seen date NOT NULL                     -- (UTC) last day a row using it was written: retention frees older
);
-- [postgresql]
CREATE INDEX IF NOT EXISTS llm_requests_bodies_seen_idx ON llm_requests_bodies (seen);
ALTER TABLE llm_requests_bodies SET (toast_tuple_target = 128);  -- the server compresses parts from 128 bytes

-- The rows with their bodies as they arrived: reference documents
-- ["llm-body/1", literal, hash, literal, ...] joined back into the exact JSON text.
CREATE OR REPLACE VIEW llm_requests_full AS
SELECT id, request_id, ts, duration_ms, ttft_ms, provider, api, method, path, upstream_url, model,
    response_model, key_id, streaming, status, error, input_tokens, output_tokens, total_tokens,
    cached_tokens, cache_write_tokens, reasoning_tokens, cost_usd, attempts, fallback_from,
    CASE WHEN jsonb_typeof(request_body) = 'array' AND request_body ->> 0 = 'llm-body/1' THEN (
        SELECT CASE WHEN bool_and(n % 2 = 0 OR b.data IS NOT NULL)
                    THEN string_agg(CASE WHEN n % 2 = 0 THEN v #>> '{}' ELSE b.data END, '' ORDER BY n)::json END
        FROM jsonb_array_elements(request_body) WITH ORDINALITY AS p (v, n)
        LEFT JOIN llm_requests_bodies AS b ON b.hash = decode(CASE WHEN n % 2 = 1 THEN v #>> '{}' END, 'hex')
        WHERE n > 1)
    ELSE request_body::json END AS request_body,
    CASE WHEN jsonb_typeof(response_body) = 'array' AND response_body ->> 0 = 'llm-body/1' THEN (
        SELECT CASE WHEN bool_and(n % 2 = 0 OR b.data IS NOT NULL)
                    THEN string_agg(CASE WHEN n % 2 = 0 THEN v #>> '{}' ELSE b.data END, '' ORDER BY n)::json END
        FROM jsonb_array_elements(response_body) WITH ORDINALITY AS p (v, n)
        LEFT JOIN llm_requests_bodies AS b ON b.hash = decode(CASE WHEN n % 2 = 1 THEN v #>> '{}' END, 'hex')
        WHERE n > 1)
    ELSE response_body::json END AS response_body,
    client_addr
FROM llm_requests;
-- [end]
--sqlite: CREATE VIEW IF NOT EXISTS llm_requests_full AS
--sqlite: SELECT id, request_id, ts, duration_ms, ttft_ms, provider, api, method, path, upstream_url, model,
--sqlite:     response_model, key_id, streaming, status, error, input_tokens, output_tokens, total_tokens,
--sqlite:     cached_tokens, cache_write_tokens, reasoning_tokens, cost_usd, attempts, fallback_from,
--sqlite:     CASE WHEN substr(request_body, 1, 14) = '["llm-body/1",' THEN (
--sqlite:         SELECT CASE WHEN count(x) = count(*) THEN group_concat(x, '') END
--sqlite:         FROM (SELECT CASE WHEN key % 2 = 1 THEN value ELSE (SELECT data FROM llm_requests_bodies
--sqlite:                   WHERE hash = value) END AS x
--sqlite:               FROM json_each(request_body) WHERE key > 0 ORDER BY key))
--sqlite:     ELSE request_body END AS request_body,
--sqlite:     CASE WHEN substr(response_body, 1, 14) = '["llm-body/1",' THEN (
--sqlite:         SELECT CASE WHEN count(x) = count(*) THEN group_concat(x, '') END
--sqlite:         FROM (SELECT CASE WHEN key % 2 = 1 THEN value ELSE (SELECT data FROM llm_requests_bodies
--sqlite:                   WHERE hash = value) END AS x
--sqlite:               FROM json_each(response_body) WHERE key > 0 ORDER BY key))
--sqlite:     ELSE response_body END AS response_body,
--sqlite:     client_addr
--sqlite: FROM llm_requests;

-- Async calls (`Prefer: respond-async`): one row per job, waiting here (not in memory) until
-- its proxy (`node`) runs it; kept llm_job_ttl hours after it ends. Never holds a client's
-- credential in clear: keys mode keeps the key's name, passthrough keeps the credential in
-- memory or, with llm_webhook_secret set, AES-GCM encrypted in `credential`.
CREATE TABLE IF NOT EXISTS llm_jobs (
    seq bigserial PRIMARY KEY,             -- queue order
    id text UNIQUE NOT NULL,               -- job_...
    node text NOT NULL,                    -- the proxy that accepted and runs it
    status text NOT NULL,                  -- queued | running | completed | failed | cancelled
    created timestamptz NOT NULL,
    started timestamptz,
    finished timestamptz,
    key_id text,                           -- as in llm_requests: virtual key name or fingerprint
    mode text,                             -- the mitmproxy mode that received it
    method text NOT NULL,
    scheme text NOT NULL,
    host text NOT NULL,
    port integer NOT NULL,
    path text NOT NULL,                    -- key= parameters removed
    headers text NOT NULL,                 -- JSON [[name, value], ...], credentials removed
    body bytea,
    needs_credential boolean NOT NULL,     -- passthrough: runs only with the client's own key
    credential bytea,                      -- that key, encrypted (NULL: kept in memory only)
    rerun boolean NOT NULL DEFAULT false,  -- was running when its proxy stopped: runs once more
    request_id text,                       -- the llm_requests row of its (last) run
    attempts text,                         -- JSON [{request_id, started, rerun, outcome}, ...]
    response_status integer,
    response_body bytea,
    error text,
    webhook text,                          -- llm-webhook URL
    webhook_status text,                   -- pending | delivered | failed
    webhook_tries integer NOT NULL DEFAULT 0,
    webhook_error text
);
CREATE INDEX IF NOT EXISTS llm_jobs_queue_idx ON llm_jobs (node, status, seq);
CREATE INDEX IF NOT EXISTS llm_jobs_finished_idx ON llm_jobs (finished);
-- Budget alerts sent (llm_alert_webhook): the primary key makes each alert once per key,
-- period and threshold, however many proxies share the database.
CREATE TABLE IF NOT EXISTS llm_budget_alerts (
    key_id text NOT NULL,
    period_start timestamptz NOT NULL,
    threshold integer NOT NULL,            -- percent of the budget: 50, 80, 100
    spend_usd numeric,
    sent timestamptz NOT NULL,
    PRIMARY KEY (key_id, period_start, threshold)
);

-- Virtual keys shared by several proxies (llm_keys=db, `llm-proxy keys --db URL ...`).
-- Only a SHA-256 of each secret is kept, never the secret. Not renamed by llm_table.
-- revision: grows with every change (microseconds, kept increasing), so proxies polling
-- (count, max(revision)) see every insert, update and delete.
CREATE TABLE IF NOT EXISTS llm_keys (
    name text PRIMARY KEY,
    hash text UNIQUE NOT NULL,             -- 'sha256:' + 64 hex digits of the secret
    prefix text NOT NULL DEFAULT '',       -- first characters of the secret, to recognise it
    created timestamptz,
    disabled boolean NOT NULL DEFAULT false,
    expires timestamptz,
    rpm integer,
    tpm integer,
    parallel integer,
    budget numeric,                        -- USD per period
    period text NOT NULL DEFAULT 'monthly',
    models jsonb,                          -- allowed model globs (NULL or []: every model)
    revision bigint NOT NULL DEFAULT 0,
    updated timestamptz
);
