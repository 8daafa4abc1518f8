-- One table of devices that asked but are not known, for every service that records them (the
-- update service: not in the inventory; the redirect service: not registered with a provider).
ALTER TABLE unknown_devices ADD COLUMN service text NOT NULL DEFAULT 'update'
    CHECK (service IN ('update', 'redirect'));
ALTER TABLE unknown_devices DROP CONSTRAINT unknown_devices_pkey;
ALTER TABLE unknown_devices ADD PRIMARY KEY (service, key);
INSERT INTO unknown_devices (service, key, mac, hardware_id, device_type, first_seen, last_seen,
                             polls, source_address, proof, version)
    SELECT 'redirect', key, mac, hardware_id, device_type, first_seen, last_seen, polls,
           source_address, proof, version
    FROM redirect_unknown;
DROP TABLE redirect_unknown;
CREATE INDEX unknown_devices_mac ON unknown_devices (mac);
