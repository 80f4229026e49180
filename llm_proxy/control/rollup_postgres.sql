-- llm-proxy hourly rollup of llm_requests (PostgreSQL 15+), read by the usage API and
-- `llm-proxy report`. Kept by statement-level triggers (which COPY fires too), so it
-- changes in the same transaction as the rows and can never disagree with them.
-- Applied by llm_proxy.control.reports.ensure_rollup with the table locked against
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

CREATE OR REPLACE FUNCTION llm_requests_hourly_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- ORDER BY: concurrent writers update groups in one order, so they never deadlock.
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO llm_requests_hourly AS r
        SELECT date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', key_id, model, response_model,
               provider, api, status, count(*), count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL),
               coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), coalesce(sum(cached_tokens), 0),
               coalesce(sum(cache_write_tokens), 0), coalesce(sum(reasoning_tokens), 0),
               coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL)
        FROM new_rows GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7
        ON CONFLICT (hour, key_id, model, response_model, provider, api, status) DO UPDATE SET
            requests = r.requests + EXCLUDED.requests, errors = r.errors + EXCLUDED.errors,
            input_tokens = r.input_tokens + EXCLUDED.input_tokens,
            output_tokens = r.output_tokens + EXCLUDED.output_tokens,
            cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
            cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
            reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
            cost_usd = r.cost_usd + EXCLUDED.cost_usd, unpriced = r.unpriced + EXCLUDED.unpriced;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        INSERT INTO llm_requests_hourly AS r
        SELECT date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', key_id, model, response_model,
               provider, api, status, -count(*), -count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL),
               -coalesce(sum(input_tokens), 0), -coalesce(sum(output_tokens), 0), -coalesce(sum(cached_tokens), 0),
               -coalesce(sum(cache_write_tokens), 0), -coalesce(sum(reasoning_tokens), 0),
               -coalesce(sum(cost_usd), 0), -count(*) FILTER (WHERE cost_usd IS NULL)
        FROM old_rows GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7
        ON CONFLICT (hour, key_id, model, response_model, provider, api, status) DO UPDATE SET
            requests = r.requests + EXCLUDED.requests, errors = r.errors + EXCLUDED.errors,
            input_tokens = r.input_tokens + EXCLUDED.input_tokens,
            output_tokens = r.output_tokens + EXCLUDED.output_tokens,
            cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
            cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
            reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
            cost_usd = r.cost_usd + EXCLUDED.cost_usd, unpriced = r.unpriced + EXCLUDED.unpriced;
        DELETE FROM llm_requests_hourly WHERE requests = 0;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION llm_requests_hourly_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE llm_requests_hourly;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS llm_requests_hourly_ins ON llm_requests;
DROP TRIGGER IF EXISTS llm_requests_hourly_upd ON llm_requests;
DROP TRIGGER IF EXISTS llm_requests_hourly_del ON llm_requests;
DROP TRIGGER IF EXISTS llm_requests_hourly_trunc ON llm_requests;
CREATE TRIGGER llm_requests_hourly_ins AFTER INSERT ON llm_requests
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION llm_requests_hourly_sync();
CREATE TRIGGER llm_requests_hourly_upd AFTER UPDATE ON llm_requests
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION llm_requests_hourly_sync();
CREATE TRIGGER llm_requests_hourly_del AFTER DELETE ON llm_requests
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION llm_requests_hourly_sync();
CREATE TRIGGER llm_requests_hourly_trunc AFTER TRUNCATE ON llm_requests
    FOR EACH STATEMENT EXECUTE FUNCTION llm_requests_hourly_truncate();

-- Fill from the rows already there (the table is locked against writes meanwhile).
TRUNCATE llm_requests_hourly;
INSERT INTO llm_requests_hourly
SELECT date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', key_id, model, response_model,
       provider, api, status, count(*), count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL),
       coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), coalesce(sum(cached_tokens), 0),
       coalesce(sum(cache_write_tokens), 0), coalesce(sum(reasoning_tokens), 0),
       coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL)
FROM llm_requests GROUP BY 1, 2, 3, 4, 5, 6, 7;
