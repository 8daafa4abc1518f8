-- Each device's recent status changes, for the console's device page (issue 16). The status
-- writer (services/update/status.py) adds a row in its batch's transaction when the device's
-- status differs from its newest row in proof, phase, in sync, firmware (prot), script hash sent
-- or last error: a row per change, not per poll (a device polling in sync adds nothing). It keeps
-- the newest 50 rows per device (services/update/repository.py, HISTORY_KEEP) and deletes the
-- older ones in the same statement; the rows go with the device.
CREATE TABLE device_status_history (
    id bigserial PRIMARY KEY,
    mac text NOT NULL REFERENCES devices (mac) ON DELETE CASCADE,
    -- The poll that brought the change (device_status.last_seen then).
    at timestamptz NOT NULL,
    -- device_status.polls then: how many polls the device had made up to this change.
    polls bigint NOT NULL,
    source_address text,
    proof text NOT NULL,
    phase text NOT NULL,
    in_sync boolean NOT NULL,
    prot text,
    hash_sent text,
    last_error text
);
CREATE INDEX device_status_history_mac ON device_status_history (mac, id);
