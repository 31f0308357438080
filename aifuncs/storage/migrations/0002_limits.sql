-- The rate limiter's GCRA buckets (limits.db under SQLite): a theoretical arrival time per bucket, in seconds
-- of the database's clock, and the admission as one function so that each takes one round trip.
CREATE TABLE limit_buckets (
    key TEXT PRIMARY KEY,
    tat DOUBLE PRECISION NOT NULL
);

-- Admit one request under every check, or say how long it waits. Buckets come flattened, in check order:
-- p_checks[i] is bucket i's check (a check passes when any one of its buckets has room). p_leases[i] is the
-- calls a bucket may lend ahead beside this request when at least p_headroom times as much room is left
-- after it (0: none); a calls bucket's lease is counted now. Credits (seconds returned by the caller: leases
-- that lapsed, tokens reserved beyond use) are applied first and stand even when the request is refused.
-- Rows are locked in key order (no two admissions deadlock) and the clock is read after the locks.
-- Returns wait_s NULL and leased[i] (-1: bucket i not taken) when admitted; else the longest wait and its check.
CREATE FUNCTION aifuncs_limit_acquire(
    p_checks INT[], p_keys TEXT[], p_intervals FLOAT8[], p_bursts FLOAT8[], p_costs FLOAT8[],
    p_calls BOOLEAN[], p_leases INT[], p_headroom INT, p_credit_keys TEXT[], p_credit_s FLOAT8[],
    OUT wait_s FLOAT8, OUT refused INT, OUT leased INT[]
) LANGUAGE plpgsql AS $$
DECLARE
    n INT := coalesce(array_length(p_keys, 1), 0);
    ukeys TEXT[];
    tats FLOAT8[];
    credited FLOAT8[];
    now_s FLOAT8;
    i INT;
    j INT;
    check_no INT;
    chosen BOOLEAN;
    best FLOAT8;
    due FLOAT8;
    w FLOAT8;
    ahead INT;
BEGIN
    WITH locked AS (
        INSERT INTO limit_buckets AS b (key, tat)
        SELECT k, 0 FROM (SELECT DISTINCT k FROM unnest(p_keys || coalesce(p_credit_keys, '{}')) k) u ORDER BY k
        ON CONFLICT (key) DO UPDATE SET tat = b.tat
        RETURNING b.key, b.tat
    )
    SELECT array_agg(l.key ORDER BY l.key), array_agg(l.tat ORDER BY l.key) INTO ukeys, tats FROM locked l;
    FOR i IN 1 .. coalesce(array_length(p_credit_keys, 1), 0) LOOP
        j := array_position(ukeys, p_credit_keys[i]);
        tats[j] := tats[j] - p_credit_s[i];
    END LOOP;
    credited := tats;
    now_s := extract(epoch FROM clock_timestamp());  -- after the locks: an earlier clock would refuse what is due
    leased := array_fill(-1, ARRAY[greatest(n, 1)]);
    i := 1;
    WHILE i <= n LOOP
        check_no := p_checks[i];
        chosen := false;
        best := NULL;
        WHILE i <= n AND p_checks[i] = check_no LOOP
            IF NOT chosen THEN
                j := array_position(ukeys, p_keys[i]);
                due := greatest(tats[j], now_s) + p_costs[i] * p_intervals[i];
                -- a request bigger than the burst passes when its bucket is empty, never otherwise
                w := due - greatest(p_bursts[i], p_costs[i]) * p_intervals[i] - now_s;
                IF w <= 1e-6 THEN  -- float sums of intervals must not refuse what is due
                    ahead := 0;
                    IF p_leases[i] > 0 AND -w / p_intervals[i] >= (p_headroom + 1) * p_leases[i] THEN
                        ahead := p_leases[i];
                    END IF;
                    IF p_calls[i] THEN
                        due := due + ahead * p_intervals[i];
                    END IF;
                    tats[j] := due;
                    leased[i] := ahead;
                    chosen := true;
                ELSE
                    best := least(coalesce(best, w), w);
                END IF;
            END IF;
            i := i + 1;
        END LOOP;
        IF NOT chosen AND (wait_s IS NULL OR best > wait_s) THEN
            wait_s := best;
            refused := check_no;
        END IF;
    END LOOP;
    IF wait_s IS NOT NULL THEN
        tats := credited;  -- the request takes nothing; the credits stand
        leased := NULL;
    END IF;
    UPDATE limit_buckets b SET tat = t.tat FROM unnest(ukeys, tats) AS t(key, tat)
    WHERE b.key = t.key AND b.tat IS DISTINCT FROM t.tat;
END;
$$;
