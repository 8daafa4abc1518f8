-- The device lifecycle the update service owns (protocol.md §10) and what only a proven device
-- may change.

-- When the device last proved itself with its certificate. Once it has, a claimed poll (URL
-- arguments only: anybody can send them) no longer changes its status, unless its customer
-- allows claimed identities (allow_claimed_secrets); such polls are kept apart below.
ALTER TABLE device_status ADD COLUMN last_proven timestamptz;
ALTER TABLE device_status ADD COLUMN claimed_seen timestamptz;
ALTER TABLE device_status ADD COLUMN claimed_address text;
ALTER TABLE device_status ADD COLUMN claimed_polls bigint NOT NULL DEFAULT 0;
-- Firmware replies sent for a build the device's `ver` already names while its PROT/BOOT does
-- not (update.firmware_attempts caps them), and the build withheld once the cap is reached.
ALTER TABLE device_status ADD COLUMN firmware_suspect text;
ALTER TABLE device_status ADD COLUMN firmware_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE device_status ADD COLUMN firmware_stuck text;
