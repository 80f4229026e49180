-- llm-proxy rollups of llm_requests (PostgreSQL 15+), read by the usage API and
-- `llm-proxy report`: an hourly and a daily level (UTC), each keyed by every field a
-- report can group by. Kept by statement-level triggers with transition tables (which
-- COPY fires too), so they change in the same transaction as the rows and can never
-- disagree with them. The triggers sit on the table the proxy writes to, plain or
-- partitioned (PostgreSQL fires a partitioned parent's statement triggers, with the rows
-- of every partition in the transition tables, for statements naming the parent).
-- Applied by llm_proxy.control.rollup.ensure_rollup with the table locked against
-- writes, then filled from the rows already there. `llm_requests` is replaced by the
-- llm_table option's value, as in schema.sql.
CREATE TABLE IF NOT EXISTS llm_requests_hourly (
    hour timestamptz NOT NULL,             -- the UTC hour of the rows' ts
    key_id text,
    model text,
    response_model text,
    provider text,
    api text,
    status integer,
    requests bigint NOT NULL,
    errors bigint NOT NULL,                -- status >= 400 or error set
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cached_tokens bigint NOT NULL,
    cache_write_tokens bigint NOT NULL,
    reasoning_tokens bigint NOT NULL,
    cost_usd numeric NOT NULL,             -- exact sum of the priced rows
    unpriced bigint NOT NULL,              -- rows whose cost_usd is NULL
    UNIQUE NULLS NOT DISTINCT (hour, key_id, model, response_model, provider, api, status)
);
CREATE TABLE IF NOT EXISTS llm_requests_daily (
    day timestamptz NOT NULL,              -- the UTC day (midnight) of the rows' ts
    key_id text,
    model text,
    response_model text,
    provider text,
    api text,
    status integer,
    requests bigint NOT NULL,
    errors bigint NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cached_tokens bigint NOT NULL,
    cache_write_tokens bigint NOT NULL,
    reasoning_tokens bigint NOT NULL,
    cost_usd numeric NOT NULL,
    unpriced bigint NOT NULL,
    UNIQUE NULLS NOT DISTINCT (day, key_id, model, response_model, provider, api, status)
);
-- Bumped by every change to rows more than an hour old (late rows, updates, deletes):
-- a reader may keep sums of days that ended hours ago for as long as it stays the same.
CREATE TABLE IF NOT EXISTS llm_requests_rollup_gen (one boolean PRIMARY KEY DEFAULT true CHECK (one),
                                                    n bigint NOT NULL);
INSERT INTO llm_requests_rollup_gen VALUES (true, 0) ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION llm_requests_rollup_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- ORDER BY: concurrent writers update groups in one order, so they never deadlock.
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        WITH h AS (
            SELECT date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour, key_id, model,
                   response_model, provider, api, status, count(*) AS requests,
                   count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL) AS errors,
                   coalesce(sum(input_tokens), 0) AS input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens,
                   coalesce(sum(cached_tokens), 0) AS cached_tokens,
                   coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,
                   coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens, coalesce(sum(cost_usd), 0) AS cost_usd,
                   count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced
            FROM new_rows GROUP BY 1, 2, 3, 4, 5, 6, 7
        ), hourly AS (
            INSERT INTO llm_requests_hourly AS r SELECT * FROM h ORDER BY 1, 2, 3, 4, 5, 6, 7
            ON CONFLICT (hour, key_id, model, response_model, provider, api, status) DO UPDATE SET
                requests = r.requests + EXCLUDED.requests, errors = r.errors + EXCLUDED.errors,
                input_tokens = r.input_tokens + EXCLUDED.input_tokens,
                output_tokens = r.output_tokens + EXCLUDED.output_tokens,
                cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
                cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
                reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
                cost_usd = r.cost_usd + EXCLUDED.cost_usd, unpriced = r.unpriced + EXCLUDED.unpriced
        )
        INSERT INTO llm_requests_daily AS r
        SELECT date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', key_id, model, response_model,
               provider, api, status, sum(requests), sum(errors), sum(input_tokens), sum(output_tokens),
               sum(cached_tokens), sum(cache_write_tokens), sum(reasoning_tokens), sum(cost_usd), sum(unpriced)
        FROM h GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7
        ON CONFLICT (day, key_id, model, response_model, provider, api, status) DO UPDATE SET
            requests = r.requests + EXCLUDED.requests, errors = r.errors + EXCLUDED.errors,
            input_tokens = r.input_tokens + EXCLUDED.input_tokens,
            output_tokens = r.output_tokens + EXCLUDED.output_tokens,
            cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
            cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
            reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
            cost_usd = r.cost_usd + EXCLUDED.cost_usd, unpriced = r.unpriced + EXCLUDED.unpriced;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        WITH h AS (
            SELECT date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour, key_id, model,
                   response_model, provider, api, status, -count(*) AS requests,
                   -count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL) AS errors,
                   -coalesce(sum(input_tokens), 0) AS input_tokens, -coalesce(sum(output_tokens), 0) AS output_tokens,
                   -coalesce(sum(cached_tokens), 0) AS cached_tokens,
                   -coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,
                   -coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens, -coalesce(sum(cost_usd), 0) AS cost_usd,
                   -count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced
            FROM old_rows GROUP BY 1, 2, 3, 4, 5, 6, 7
        ), hourly AS (
            INSERT INTO llm_requests_hourly AS r SELECT * FROM h ORDER BY 1, 2, 3, 4, 5, 6, 7
            ON CONFLICT (hour, key_id, model, response_model, provider, api, status) DO UPDATE SET
                requests = r.requests + EXCLUDED.requests, errors = r.errors + EXCLUDED.errors,
                input_tokens = r.input_tokens + EXCLUDED.input_tokens,
                output_tokens = r.output_tokens + EXCLUDED.output_tokens,
                cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
                cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
                reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
                cost_usd = r.cost_usd + EXCLUDED.cost_usd, unpriced = r.unpriced + EXCLUDED.unpriced
        )
        INSERT INTO llm_requests_daily AS r
        SELECT date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', key_id, model, response_model,
               provider, api, status, sum(requests), sum(errors), sum(input_tokens), sum(output_tokens),
               sum(cached_tokens), sum(cache_write_tokens), sum(reasoning_tokens), sum(cost_usd), sum(unpriced)
        FROM h GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7
        ON CONFLICT (day, key_id, model, response_model, provider, api, status) DO UPDATE SET
            requests = r.requests + EXCLUDED.requests, errors = r.errors + EXCLUDED.errors,
            input_tokens = r.input_tokens + EXCLUDED.input_tokens,
            output_tokens = r.output_tokens + EXCLUDED.output_tokens,
            cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
            cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
            reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
            cost_usd = r.cost_usd + EXCLUDED.cost_usd, unpriced = r.unpriced + EXCLUDED.unpriced;
        DELETE FROM llm_requests_hourly WHERE requests = 0;
        DELETE FROM llm_requests_daily WHERE requests = 0;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        UPDATE llm_requests_rollup_gen SET n = n + 1;
    ELSIF EXISTS (SELECT 1 FROM new_rows WHERE ts < now() - interval '1 hour') THEN
        UPDATE llm_requests_rollup_gen SET n = n + 1;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION llm_requests_rollup_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE llm_requests_hourly, llm_requests_daily;
    UPDATE llm_requests_rollup_gen SET n = n + 1;
    RETURN NULL;
END $$;

-- The triggers of the earlier hourly-only rollup, if any.
DROP TRIGGER IF EXISTS llm_requests_hourly_ins ON llm_requests;
DROP TRIGGER IF EXISTS llm_requests_hourly_upd ON llm_requests;
DROP TRIGGER IF EXISTS llm_requests_hourly_del ON llm_requests;
DROP TRIGGER IF EXISTS llm_requests_hourly_trunc ON llm_requests;
DROP FUNCTION IF EXISTS llm_requests_hourly_sync(), llm_requests_hourly_truncate();
-- Recompute both levels for the whole UTC days in [lo, hi) from the rows: for changes the
-- triggers cannot see, e.g. after dropping, detaching or truncating one partition
-- (`SELECT llm_requests_rollup_rebuild('2026-01-01', '2026-02-01')`). Writes wait meanwhile.
CREATE OR REPLACE FUNCTION llm_requests_rollup_rebuild(lo timestamptz, hi timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    first timestamptz := date_trunc('day', lo AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    last timestamptz := date_trunc('day', (hi AT TIME ZONE 'UTC') + interval '1 day' - interval '1 microsecond')
                        AT TIME ZONE 'UTC';
BEGIN
    LOCK TABLE llm_requests IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM llm_requests_hourly WHERE hour >= first AND hour < last;
    DELETE FROM llm_requests_daily WHERE day >= first AND day < last;
    INSERT INTO llm_requests_hourly
    SELECT date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', key_id, model, response_model,
           provider, api, status, count(*), count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL),
           coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), coalesce(sum(cached_tokens), 0),
           coalesce(sum(cache_write_tokens), 0), coalesce(sum(reasoning_tokens), 0),
           coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL)
    FROM llm_requests WHERE ts >= first AND ts < last GROUP BY 1, 2, 3, 4, 5, 6, 7;
    INSERT INTO llm_requests_daily
    SELECT date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', key_id, model, response_model,
           provider, api, status, sum(requests), sum(errors), sum(input_tokens), sum(output_tokens),
           sum(cached_tokens), sum(cache_write_tokens), sum(reasoning_tokens), sum(cost_usd), sum(unpriced)
    FROM llm_requests_hourly WHERE hour >= first AND hour < last GROUP BY 1, 2, 3, 4, 5, 6, 7;
    UPDATE llm_requests_rollup_gen SET n = n + 1;
END $$;

DROP TRIGGER IF EXISTS llm_requests_rollup_ins ON llm_requests;
DROP TRIGGER IF EXISTS llm_requests_rollup_upd ON llm_requests;
DROP TRIGGER IF EXISTS llm_requests_rollup_del ON llm_requests;
DROP TRIGGER IF EXISTS llm_requests_rollup_trunc ON llm_requests;
CREATE TRIGGER llm_requests_rollup_ins AFTER INSERT ON llm_requests
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION llm_requests_rollup_sync();
CREATE TRIGGER llm_requests_rollup_upd AFTER UPDATE ON llm_requests
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION llm_requests_rollup_sync();
CREATE TRIGGER llm_requests_rollup_del AFTER DELETE ON llm_requests
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION llm_requests_rollup_sync();
CREATE TRIGGER llm_requests_rollup_trunc AFTER TRUNCATE ON llm_requests
    FOR EACH STATEMENT EXECUTE FUNCTION llm_requests_rollup_truncate();

-- Fill from the rows already there (the table is locked against writes meanwhile).
TRUNCATE llm_requests_hourly, llm_requests_daily;
INSERT INTO llm_requests_hourly
SELECT date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', key_id, model, response_model,
       provider, api, status, count(*), count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL),
       coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), coalesce(sum(cached_tokens), 0),
       coalesce(sum(cache_write_tokens), 0), coalesce(sum(reasoning_tokens), 0),
       coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL)
FROM llm_requests GROUP BY 1, 2, 3, 4, 5, 6, 7;
INSERT INTO llm_requests_daily
SELECT date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', key_id, model, response_model,
       provider, api, status, sum(requests), sum(errors), sum(input_tokens), sum(output_tokens),
       sum(cached_tokens), sum(cache_write_tokens), sum(reasoning_tokens), sum(cost_usd), sum(unpriced)
FROM llm_requests_hourly GROUP BY 1, 2, 3, 4, 5, 6, 7;
UPDATE llm_requests_rollup_gen SET n = n + 1;
