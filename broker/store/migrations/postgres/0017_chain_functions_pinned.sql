-- Version 17: the chain's own checks (version 5's `libos_fence` and `libos_head_is`) read
-- every name they use where the store put it, whatever search path the calling session has.
-- A function's body is planned with its caller's search path, and a writer without the key
-- (one who can run DDL as the brokers' role) can put a schema of their own, or `public` ahead
-- of pg_catalog, first in every session's (`ALTER DATABASE ... SET search_path`): their `<>`,
-- `=` or `repeat` then stood in for the catalog's, and the fence let a lost lease write, or a
-- head check passed a moved head or told the broker a head that is not. Now each function
-- runs with `pg_catalog` first, then the store's schema (the current one as the migrations
-- run: `migrations.IN_STORE_SCHEMA`; where version 5 made them), then `pg_temp` last; every
-- operator, function and type is named with its schema as well. Both stay SECURITY INVOKER
-- (they run with the caller's rights: nothing to gain by calling them).

CREATE OR REPLACE FUNCTION libos_fence(p_pid BIGINT, p_token BIGINT, p_now DOUBLE PRECISION)
RETURNS pg_catalog.void LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    held_token BIGINT;
    held_expires DOUBLE PRECISION;
BEGIN
    SELECT token, expires INTO held_token, held_expires FROM leases
        WHERE pid OPERATOR(pg_catalog.=) p_pid;
    IF NOT FOUND OR held_token OPERATOR(pg_catalog.<>) p_token THEN
        RAISE EXCEPTION 'process %: lease % was taken by another broker', p_pid, p_token
            USING ERRCODE = 'LBL01';
    END IF;
    IF held_expires OPERATOR(pg_catalog.<=) p_now THEN
        RAISE EXCEPTION 'process %: lease % expired', p_pid, p_token USING ERRCODE = 'LBL01';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION libos_head_is(p_seq BIGINT, p_hash pg_catalog.text)
RETURNS pg_catalog.void LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    head_seq BIGINT;
    head_hash pg_catalog.text;
BEGIN
    SELECT seq, hash INTO head_seq, head_hash FROM audit ORDER BY seq DESC LIMIT 1;
    IF NOT FOUND THEN
        head_seq := 0;
        head_hash := pg_catalog.repeat('0', 64);
    END IF;
    IF head_seq OPERATOR(pg_catalog.<>) p_seq OR head_hash OPERATOR(pg_catalog.<>) p_hash THEN
        RAISE EXCEPTION 'the chain''s head moved to %', head_seq USING ERRCODE = 'LBH01',
            DETAIL = pg_catalog.concat_ws(' ', head_seq, head_hash);
    END IF;
END $$;

DO $$
DECLARE
    here pg_catalog.text := pg_catalog.quote_ident(pg_catalog.current_schema());
BEGIN
    EXECUTE pg_catalog.format('ALTER FUNCTION %s.libos_fence(BIGINT, BIGINT, DOUBLE PRECISION)'
        ' SET search_path = pg_catalog, %s, pg_temp', here, here);
    EXECUTE pg_catalog.format('ALTER FUNCTION %s.libos_head_is(BIGINT, pg_catalog.text)'
        ' SET search_path = pg_catalog, %s, pg_temp', here, here);
END $$;
