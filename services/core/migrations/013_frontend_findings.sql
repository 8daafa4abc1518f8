-- The Frontend plan (services/frontend/): stored config backups checked against the plan. A
-- finding (a concrete config line the seed names, missing or wrong) is recorded once per backup
-- version and kind; a new one also becomes a 'drift' config-backup alert, which the events
-- service turns into an event (and a syslog message) like every other backup alert (009).

ALTER TABLE backup_alerts DROP CONSTRAINT backup_alerts_kind_check;
ALTER TABLE backup_alerts ADD CONSTRAINT backup_alerts_kind_check
    CHECK (kind IN ('changed', 'stale', 'drift'));

CREATE TABLE frontend_findings (
    mac text NOT NULL CHECK (mac ~ '^[0-9a-f]{12}$'),
    -- The backup version found wrong; a finding is about one version. No foreign key, so the
    -- backup service's retention and tools stay as they are; findings of versions pruned since
    -- are removed by the next recording (services/frontend/repository.py).
    version_id bigint NOT NULL,
    code text NOT NULL CHECK (length(code) BETWEEN 1 AND 64),
    frontend text NOT NULL,
    message text NOT NULL,
    created_at timestamptz NOT NULL,
    alert_id bigint,
    PRIMARY KEY (mac, version_id, code)
);
CREATE INDEX frontend_findings_created ON frontend_findings (created_at);
