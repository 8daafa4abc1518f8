-- Canary roll-outs of a published script version (`pbxfront rollouts …`): waves of devices get
-- the new version first; a wave advances only when its devices came back in sync on it and
-- raised no new alarm within the soak time. Devices outside the waves keep the version before.
CREATE TABLE script_rollouts (
    id bigserial PRIMARY KEY,
    from_version bigint NOT NULL REFERENCES script_versions (id),
    to_version bigint NOT NULL REFERENCES script_versions (id),
    -- [{"label": "customer:Kuenkel00001", "macs": [...], "customers": [...], "percent": null}]
    waves jsonb NOT NULL,
    soak_seconds integer NOT NULL CHECK (soak_seconds >= 0),
    wave_timeout_seconds integer NOT NULL CHECK (wave_timeout_seconds > 0),
    state text NOT NULL CHECK (state IN ('running', 'halted', 'done', 'aborted')),
    -- The wave being watched (0-based) and when it started / all its devices were in sync.
    wave integer NOT NULL DEFAULT 0,
    wave_started_at timestamptz NOT NULL DEFAULT now(),
    wave_synced_at timestamptz,
    reason text,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- At most one roll-out is in progress (running or halted) at a time.
CREATE UNIQUE INDEX script_rollouts_one_open ON script_rollouts ((true))
    WHERE state IN ('running', 'halted');

CREATE TABLE script_rollout_devices (
    rollout_id bigint NOT NULL REFERENCES script_rollouts (id) ON DELETE CASCADE,
    mac text NOT NULL,
    wave integer NOT NULL,
    PRIMARY KEY (rollout_id, mac)
);

-- The published version each device was served last, so a wave counts only polls on it.
ALTER TABLE device_status ADD COLUMN script_version bigint;

CREATE FUNCTION script_rollouts_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pbxfront_rollouts', NEW.id::text);
    RETURN NEW;
END $$;
CREATE TRIGGER script_rollouts_notify AFTER INSERT OR UPDATE ON script_rollouts
    FOR EACH ROW EXECUTE FUNCTION script_rollouts_notify();
