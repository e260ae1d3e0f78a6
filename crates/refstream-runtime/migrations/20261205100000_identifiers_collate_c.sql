-- Every text column compares as bytes (COLLATE "C"), whatever locale the database was created
-- with. refstream's text columns hold identifiers, keyed hashes, codes and enum-like labels:
-- nothing a person reads in a language's order. Under a linguistic collation (en_US.UTF-8, or
-- even C.UTF-8, which Postgres does not recognise as C), each B-tree comparison copies both
-- strings and calls strcoll; under "C" it is one memcmp. Measured on the bench machine: index
-- lookups on a text key took half the time under "C" (400,000 lookups, 1.87 s against 0.97 s),
-- and the registration path makes a few dozen such comparisons per event.
--
-- The order of identifier columns in SQL (ORDER BY user_id, sorted inserts) is then byte
-- order, the order Rust's `String` sorts in, on any database locale. (A sort of bare
-- parameters, such as the values of an unnest, still follows the database's locale.)
--
-- Upgrading: a fraud-scorer built before this migration walks the ring graph with seeds in the
-- database's collation, which Postgres refuses against these columns in a recursive query, and
-- would dead-letter the referrals it reads. Stop the fraud scorers before the first upgraded
-- worker starts (any worker applies the migrations), or replay their dead letters afterwards
-- (`refstream dlq replay <id>`).
--
-- The columns keep their type; only their indexes are rebuilt. The analytics views read these
-- columns, and Postgres will not change a column a view uses, so they are dropped and created
-- again from their own definitions (in creation order, so a view built on another follows it).
-- On a large deployment this migration rebuilds every index of these tables under an exclusive
-- lock: run it in a quiet window.
DO $$
DECLARE
    view_names text[] := '{}';
    view_defs  text[] := '{}';
    v record;
    t record;
BEGIN
    FOR v IN
        SELECT c.oid, c.relname FROM pg_class c
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'v'
        ORDER BY c.oid
    LOOP
        view_names := view_names || v.relname::text;
        view_defs := view_defs || pg_get_viewdef(v.oid);
    END LOOP;
    FOR i IN REVERSE coalesce(array_length(view_names, 1), 0)..1 LOOP
        EXECUTE format('DROP VIEW %I', view_names[i]);
    END LOOP;

    FOR t IN
        SELECT c.relname,
               string_agg(format('ALTER COLUMN %I TYPE text COLLATE "C"', a.attname), ', ' ORDER BY a.attnum) AS changes
        FROM pg_class c
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
          AND c.relname NOT LIKE '\_sqlx%'
          AND a.atttypid = 'text'::regtype AND a.attcollation <> '"C"'::regcollation
        GROUP BY c.relname
    LOOP
        EXECUTE format('ALTER TABLE %I %s', t.relname, t.changes);
    END LOOP;

    FOR i IN 1..coalesce(array_length(view_names, 1), 0) LOOP
        EXECUTE format('CREATE VIEW %I AS %s', view_names[i], view_defs[i]);
    END LOOP;
END;
$$;
