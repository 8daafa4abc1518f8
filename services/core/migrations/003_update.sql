-- Device status as the update service sees it (one row per device, upserted by every poll, so
-- concurrent polls of one device serialise on the row instead of corrupting it), devices that
-- polled but are not in the inventory (the seed's ZCD: an operator adopts them), and firmware.

CREATE TABLE device_status (
    mac text PRIMARY KEY REFERENCES devices (mac) ON DELETE CASCADE,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    polls bigint NOT NULL DEFAULT 1,
    source_address text,
    proof text NOT NULL CHECK (proof IN ('proven', 'claimed', 'anonymous')),
    -- The script the device asked for last: staging or update.
    phase text NOT NULL CHECK (phase IN ('staging', 'update')),
    -- Poll arguments as sent (protocol.md §1), sanitised and capped.
    version text,
    prot text,
    boot text,
    device_check text,
    cfg text,
    -- The hash of the script body sent last, and whether the device reported it back.
    hash_sent text,
    in_sync boolean NOT NULL DEFAULT false,
    -- Set by `pbxfront devices restage`; cleared once the device asks for staging.txt again.
    restage_requested boolean NOT NULL DEFAULT false,
    staged_at timestamptz,
    last_error text
);
CREATE INDEX device_status_last_seen ON device_status (last_seen);

CREATE TABLE unknown_devices (
    -- The MAC when the device sent one, else its hardware id.
    key text PRIMARY KEY CHECK (length(key) <= 64),
    mac text,
    hardware_id text,
    device_type text,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    polls bigint NOT NULL DEFAULT 1,
    source_address text,
    proof text NOT NULL,
    version text
);
CREATE INDEX unknown_devices_last_seen ON unknown_devices (last_seen);
