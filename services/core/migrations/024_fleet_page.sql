-- The console's fleet page over 100,000 devices (`pbxfront bench console`): pages in the
-- default order (customer, then MAC) and by type are read from an index, however deep, and a
-- customer's devices come in page order. The index on customer alone is covered by the new one.
CREATE INDEX devices_customer_mac ON devices (customer, mac);
DROP INDEX devices_customer;
CREATE INDEX devices_type_mac ON devices (device_type, mac);

-- The fleet search (a substring of MAC, hardware id, customer, CPE id or name, in lower case)
-- through a GIN index of the text's trigrams: every trigram of the searched text is one of the
-- device's, so the index finds the candidates and LIKE checks them. Built-in arrays rather than
-- the pg_trgm extension, which not every PostgreSQL has (the embedded one has not).
CREATE FUNCTION fleet_trigrams(text) RETURNS text[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT ARRAY(SELECT DISTINCT substr($1, i, 3) FROM generate_series(1, length($1) - 2) AS i) $$;
-- The expression is UpdateRepository's _SEARCH_TEXT; the index is used only while both match.
CREATE INDEX devices_search ON devices USING gin (fleet_trigrams(lower(
    mac || ' ' || hardware_id || ' ' || customer || ' ' || COALESCE(cpe_id, '') || ' '
    || COALESCE(name, ''))));
