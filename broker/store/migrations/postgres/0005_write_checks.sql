-- Version 5: the checks of a write transaction as server-side functions, so a broker sends a
-- whole transaction in one round trip (psycopg's pipeline mode, `broker.store.postgres`) and
-- holds the write lock only while the server runs it. Each raises, and so aborts the
-- transaction with nothing written, when its check fails; each error's SQLSTATE is one the
-- store maps to its typed error.

-- The fence (`broker.store.leases`): the lease of process `p_pid` still has token `p_token`
-- and has not expired at `p_now` (the broker's clock). LBL01: the lease was lost.
CREATE FUNCTION libos_fence(p_pid BIGINT, p_token BIGINT, p_now DOUBLE PRECISION)
RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    held leases%ROWTYPE;
BEGIN
    SELECT * INTO held FROM leases WHERE pid = p_pid;
    IF NOT FOUND OR held.token <> p_token THEN
        RAISE EXCEPTION 'process %: lease % was taken by another broker', p_pid, p_token
            USING ERRCODE = 'LBL01';
    END IF;
    IF held.expires <= p_now THEN
        RAISE EXCEPTION 'process %: lease % expired', p_pid, p_token USING ERRCODE = 'LBL01';
    END IF;
END $$;

-- The chain's head (`broker.store.chain`): the newest audit record is `p_seq` with hash
-- `p_hash` (the head the records about to be inserted link to; 0 and the genesis hash for an
-- empty chain). LBH01: it moved; the error's detail is the head as it is, "<seq> <hash>".
CREATE FUNCTION libos_head_is(p_seq BIGINT, p_hash TEXT)
RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    head_seq BIGINT;
    head_hash TEXT;
BEGIN
    SELECT seq, hash INTO head_seq, head_hash FROM audit ORDER BY seq DESC LIMIT 1;
    IF NOT FOUND THEN
        head_seq := 0;
        head_hash := repeat('0', 64);
    END IF;
    IF head_seq <> p_seq OR head_hash <> p_hash THEN
        RAISE EXCEPTION 'the chain''s head moved to %', head_seq USING ERRCODE = 'LBH01',
            DETAIL = head_seq || ' ' || head_hash;
    END IF;
END $$;
