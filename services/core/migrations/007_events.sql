-- Events (services/events/): alarms, events and log lines devices send to the Frontend.
--
-- An append-only log: ids are handed out by one writer at a time (the intake transaction takes
-- an advisory transaction lock first), so a row with a smaller id is always committed before a
-- row with a larger one and a forwarder reading "id > cursor" never skips one that commits late.
-- A repeat of an active alarm (devices re-send them every ~30 min) updates that alarm's row
-- (repeats, last_seen_at) instead of adding one; a clear adds its own row and closes the alarm.
CREATE TABLE events (
    id bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL,
    kind text NOT NULL CHECK (kind IN ('alarm-set', 'alarm-clear', 'event', 'log')),
    -- The device's own time, when one could be read; time_flag says when it looks wrong.
    event_time timestamptz,
    time_flag text CHECK (time_flag IN ('future', 'past', 'unreadable')),
    code text,
    -- As sent (Minor, Major, Critical, Indeterminate, or a syslog level), and as syslog 0..7.
    severity text,
    syslog_severity smallint NOT NULL CHECK (syslog_severity BETWEEN 0 AND 7),
    source text,
    text text,
    details text,
    -- The sending device (proven by certificate or named by the request) and, when it relays
    -- another device's alarm, that one ("remote").
    device_mac text,
    device_hardware_id text,
    device_ip text,
    remote_hardware_id text,
    remote_ip text,
    -- From the inventory when the event arrived.
    customer text,
    proof text NOT NULL CHECK (proof IN ('certificate', 'credentials')),
    account text,
    source_address text,
    content_type text,
    raw bytea NOT NULL,
    -- Everything that was parsed, by name, and what could not be.
    fields jsonb NOT NULL DEFAULT '{}',
    problems text[] NOT NULL DEFAULT '{}',
    -- Alarms: device|remote|code|source; at most one active alarm per key.
    alarm_key text,
    active boolean NOT NULL DEFAULT false,
    repeats integer NOT NULL DEFAULT 0,
    last_seen_at timestamptz NOT NULL,
    cleared_at timestamptz,
    cleared_by bigint,
    -- With events.forward_repeats: this row is a repeat of that alarm.
    repeat_of bigint
);
CREATE UNIQUE INDEX events_active_alarm ON events (alarm_key) WHERE active;
CREATE INDEX events_device ON events (device_mac, id);
CREATE INDEX events_device_hardware_id ON events (device_hardware_id, id);
CREATE INDEX events_customer ON events (customer, id);
CREATE INDEX events_received ON events (received_at);

-- One delivery cursor per syslog destination: the last event id it has been given (and kept
-- long enough to count as delivered). Survives restarts; the node holding the destination's
-- advisory lock is the only one that moves it.
CREATE TABLE event_destinations (
    name text PRIMARY KEY,
    url text NOT NULL,
    delivered_id bigint NOT NULL CHECK (delivered_id >= 0),
    delivered_total bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Which process forwards now (host:pid), and the last problem it had.
    holder text,
    last_error text,
    last_error_at timestamptz
);
