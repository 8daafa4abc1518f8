-- Config-backup alerts (backup_alerts, migration 005) become events, so they are listed and
-- forwarded to syslog with everything else. event_imports keeps, per source table, the last row
-- already turned into an event; the row lock on it makes every node import each alert once.
-- Events made by pbxfront itself carry proof 'internal'.

ALTER TABLE events DROP CONSTRAINT events_proof_check;
ALTER TABLE events ADD CONSTRAINT events_proof_check
    CHECK (proof IN ('certificate', 'credentials', 'internal'));

CREATE TABLE event_imports (
    source text PRIMARY KEY,
    last_id bigint NOT NULL
);
INSERT INTO event_imports (source, last_id) VALUES ('backup_alerts', 0);
