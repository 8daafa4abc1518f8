-- Safe fleet changes (issue 15): who owns which customer, archived customers, the audit log.

-- Which source owns a customer: 'api' (created through the admin API), or 'file:<name>' /
-- 'file:<folder>/<name>' (an inventory file, by its base name; files of a folder by folder and
-- name). NULL: not claimed yet (created before ownership existed); the first file naming it
-- claims it. A file never changes or removes a customer another source owns.
ALTER TABLE customers ADD COLUMN owner text CHECK (owner <> '');

-- A removed customer (without --purge): its row, devices and variables as they were, and the
-- contacts version its directory served. Its contact versions stay in contact_versions and its
-- config backups in backup_devices/backup_versions, so `pbxfront inventory restore` brings it
-- all back. An archived id cannot be created again until it is restored or purged.
CREATE TABLE customer_archive (
    customer text PRIMARY KEY,
    archived_at timestamptz NOT NULL DEFAULT now(),
    archived_by text NOT NULL,
    owner text,
    record jsonb NOT NULL
);

-- Contact history outlives its customer now (archived above); contact_current still goes with
-- the customer, so the directory stops serving an archived customer at once.
ALTER TABLE contact_versions DROP CONSTRAINT contact_versions_customer_fkey;

-- Every change by a person or an API client (services/core/audit.py). before/after are JSON with
-- secrets already redacted by the writer. Appended only; ids become visible in id order (the
-- writer holds an advisory lock from its insert to its commit), so the events import below can
-- follow them with a cursor.
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL,
    -- The remote address of an API client, or 'cli'.
    origin text NOT NULL,
    action text NOT NULL,
    object_type text NOT NULL,
    object_id text NOT NULL,
    before jsonb,
    after jsonb
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_object ON audit_log (object_type, object_id, id);

CREATE FUNCTION audit_log_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pbxfront_audit', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_log_notify AFTER INSERT ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_notify();

-- The events service imports audit rows as events (code 'audit', source 'audit') and so forwards
-- them to syslog, as it does backup alerts (migration 009).
INSERT INTO event_imports (source, last_id) VALUES ('audit_log', 0);
