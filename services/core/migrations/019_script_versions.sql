-- Script trees as published versions (`pbxfront scripts publish`), so every Frontend serves the
-- same scripts (update.scripts_source = "database") and a version can be rolled back.
CREATE TABLE script_versions (
    id bigserial PRIMARY KEY,
    published_at timestamptz NOT NULL DEFAULT now(),
    published_by text NOT NULL CHECK (length(published_by) <= 200),
    comment text NOT NULL DEFAULT '' CHECK (length(comment) <= 1000),
    -- SHA-256 over the sorted file names and contents: an identical tree is not published twice.
    tree_sha256 text NOT NULL,
    files integer NOT NULL,
    bytes bigint NOT NULL
);

CREATE TABLE script_files (
    version_id bigint NOT NULL REFERENCES script_versions (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    content bytea NOT NULL,
    PRIMARY KEY (version_id, name)
);

-- One row: the version every node serves. Changing it notifies every node.
CREATE TABLE script_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    current_version bigint REFERENCES script_versions (id),
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by text
);
INSERT INTO script_state DEFAULT VALUES;

CREATE FUNCTION script_state_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pbxfront_scripts', COALESCE(NEW.current_version, 0)::text);
    RETURN NEW;
END $$;
CREATE TRIGGER script_state_notify AFTER UPDATE ON script_state
    FOR EACH ROW EXECUTE FUNCTION script_state_notify();
