-- Firmware shared by every Frontend (update.firmware_source = "database"): `pbxfront firmware add`
-- on any node stores the file here once; every node serves it from a local cache it fills from
-- these rows and checks by SHA-256 before serving.

-- File contents, by SHA-256 (the same image under two builds is stored once), in chunks of at
-- most 1 MiB so neither side ever holds a whole image in one message.
CREATE TABLE firmware_blobs (
    sha256 text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size bigint NOT NULL CHECK (size >= 0),
    chunks integer NOT NULL CHECK (chunks >= 0),
    stored_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE firmware_chunks (
    sha256 text NOT NULL REFERENCES firmware_blobs (sha256) ON DELETE CASCADE,
    seq integer NOT NULL CHECK (seq >= 0),
    data bytea NOT NULL,
    PRIMARY KEY (sha256, seq)
);
-- Firmware images are compressed already: store them out of line without trying pglz on them.
ALTER TABLE firmware_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- What devices may load: firm/<build>/<name> (the same name rules as the file store).
CREATE TABLE firmware_files (
    build text NOT NULL CHECK (build ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$' AND build !~ '\.\.'),
    name text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.(bin|apk)$'),
    sha256 text NOT NULL REFERENCES firmware_blobs (sha256),
    -- Written into every node's cached copy as its modification time, so Last-Modified and
    -- ETag are the same on every node (a device may resume a download on another one).
    added_at timestamptz NOT NULL DEFAULT now(),
    added_by text NOT NULL CHECK (length(added_by) <= 200),
    device_type text,
    PRIMARY KEY (build, name)
);
CREATE INDEX firmware_files_sha256 ON firmware_files (sha256);

-- One row, bumped by every add and remove: a node polls it (one index read) and reloads the
-- list when it changed.
CREATE TABLE firmware_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version bigint NOT NULL DEFAULT 0,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO firmware_state DEFAULT VALUES;

-- Which node holds a verified copy of which content (`pbxfront firmware list`); a node is its
-- host name and cache folder.
CREATE TABLE firmware_caches (
    node text NOT NULL CHECK (length(node) <= 500),
    frontend text NOT NULL,
    sha256 text NOT NULL REFERENCES firmware_blobs (sha256) ON DELETE CASCADE,
    cached_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, sha256)
);
