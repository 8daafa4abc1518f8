-- HTTP Digest (RFC 7616, services/core/digest.py) and the backup archive (services/backup/).

-- Digest cannot be checked against an argon2 hash: the server needs H(name:realm:password) (HA1)
-- per algorithm. It is stored only for accounts with the event-sender role (the devices' "HTTP
-- client" account of the seed), written whenever such an account's password is set, and removed
-- with the role or the account. An HA1 is password-equivalent for its realm.
CREATE TABLE account_digests (
    account text NOT NULL REFERENCES accounts (name) ON DELETE CASCADE ON UPDATE CASCADE,
    realm text NOT NULL,
    algorithm text NOT NULL CHECK (algorithm IN ('MD5', 'SHA-256')),
    ha1 text NOT NULL CHECK (ha1 ~ '^[0-9a-f]{32}([0-9a-f]{32})?$'),
    PRIMARY KEY (account, realm, algorithm)
);

-- The key that signs Digest nonces, shared by every node so a nonce issued by one is accepted by
-- another; created by the first node that needs it.
CREATE TABLE digest_secret (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    secret bytea NOT NULL CHECK (length(secret) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The highest nonce count seen per nonce (replay protection); a row lives as long as its nonce.
CREATE TABLE digest_nonce_uses (
    nonce text PRIMARY KEY CHECK (length(nonce) <= 128),
    nonce_count bigint NOT NULL CHECK (nonce_count > 0),
    expires_at timestamptz NOT NULL
);
CREATE INDEX digest_nonce_uses_expires ON digest_nonce_uses (expires_at);

-- Config contents, deduplicated by the SHA-256 of the bytes as uploaded, zlib-compressed.
CREATE TABLE backup_contents (
    sha256 bytea PRIMARY KEY CHECK (length(sha256) = 32),
    size integer NOT NULL CHECK (size > 0),
    compressed bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per device that ever sent a backup. No foreign key to devices: the archive outlives a
-- device's removal from the inventory. Every PUT locks this row, so concurrent PUTs of one device
-- are compared and stored one after the other.
CREATE TABLE backup_devices (
    mac text PRIMARY KEY CHECK (mac ~ '^[0-9a-f]{12}$'),
    hardware_id text NOT NULL,
    -- The device's customer at its last PUT (retention and alerts go by it).
    customer text NOT NULL,
    device_type text NOT NULL,
    first_put_at timestamptz NOT NULL,
    last_put_at timestamptz NOT NULL,
    -- The last PUT that matched the latest version (after normalisation): "seen, unchanged".
    last_unchanged_at timestamptz,
    puts bigint NOT NULL DEFAULT 0,
    latest_version bigint,
    -- Set when a stale alert was raised; cleared by the next PUT.
    stale_alerted_at timestamptz
);
CREATE INDEX backup_devices_customer ON backup_devices (customer);
CREATE INDEX backup_devices_last_put ON backup_devices (last_put_at);

CREATE TABLE backup_versions (
    id bigserial PRIMARY KEY,
    mac text NOT NULL REFERENCES backup_devices (mac) ON DELETE CASCADE,
    content_sha256 bytea NOT NULL REFERENCES backup_contents (sha256),
    -- SHA-256 of the content without its volatile lines: what "changed" compares.
    normalized_sha256 bytea NOT NULL CHECK (length(normalized_sha256) = 32),
    received_at timestamptz NOT NULL,
    -- The last PUT of this very content (normalised), i.e. when it was last confirmed.
    last_seen_at timestamptz NOT NULL,
    unchanged_puts integer NOT NULL DEFAULT 0,
    size integer NOT NULL,
    -- 'utf-8' text, 'other' text (not UTF-8), 'binary' (contains NUL bytes).
    encoding text NOT NULL CHECK (encoding IN ('utf-8', 'other', 'binary')),
    upload_name text NOT NULL,
    -- How the uploader was identified: client certificate, account credentials, or anonymous.
    proof text NOT NULL CHECK (proof IN ('certificate', 'credentials', 'anonymous')),
    account text,
    source_address text,
    -- Against the previous version (normalised lines); NULL for a device's first version.
    lines_added integer,
    lines_removed integer
);
CREATE INDEX backup_versions_device ON backup_versions (mac, id DESC);
CREATE INDEX backup_versions_content ON backup_versions (content_sha256);

-- Alerts for the events service (and syslog): a changed config, a stale backup. A row per alert,
-- announced with NOTIFY pbxfront_backup_alert (payload: the row id) on commit.
CREATE TABLE backup_alerts (
    id bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('changed', 'stale')),
    mac text NOT NULL,
    hardware_id text NOT NULL,
    customer text NOT NULL,
    created_at timestamptz NOT NULL,
    -- changed: the new and the previous version and the diffstat between them.
    version_id bigint,
    previous_version_id bigint,
    lines_added integer,
    lines_removed integer,
    -- stale: when the device last PUT anything.
    last_put_at timestamptz,
    message text NOT NULL
);
CREATE INDEX backup_alerts_created ON backup_alerts (created_at);
