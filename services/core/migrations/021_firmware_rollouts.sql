-- Canary roll-outs of a firmware target as well (issue #15 item 4): the waves' devices of one
-- device type get fw-prot / fw-boot = build before the others; after the last wave the build is
-- written to the device_type layer of the inventory.
ALTER TABLE script_rollouts ADD COLUMN kind text NOT NULL DEFAULT 'scripts'
    CHECK (kind IN ('scripts', 'firmware'));
ALTER TABLE script_rollouts ALTER COLUMN from_version DROP NOT NULL;
ALTER TABLE script_rollouts ALTER COLUMN to_version DROP NOT NULL;
ALTER TABLE script_rollouts ADD COLUMN device_type text;
ALTER TABLE script_rollouts ADD COLUMN firmware_kind text CHECK (firmware_kind IN ('prot', 'boot'));
ALTER TABLE script_rollouts ADD COLUMN build text CHECK (length(build) <= 64);
ALTER TABLE script_rollouts ADD CONSTRAINT script_rollouts_target CHECK (
    (kind = 'scripts' AND from_version IS NOT NULL AND to_version IS NOT NULL)
    OR (kind = 'firmware' AND device_type IS NOT NULL AND firmware_kind IS NOT NULL
        AND build IS NOT NULL));
