-- The provider CA (`pbxfront ca`): every certificate it issued, and revocations, so every node
-- serves the same CRL. The CA key and certificate live in files ([ca] settings), never here.
-- Plus the roll-out of provider certificates to devices (protocol.md §9), one row per device,
-- locked by the poll that advances it (several nodes serve one device).

CREATE TABLE ca_certificates (
    -- The certificate serial, lowercase hex without leading zeros (as openssl prints it).
    serial text PRIMARY KEY CHECK (serial ~ '^[0-9a-f]{1,40}$'),
    -- SHA-256 of the issuing CA certificate (lowercase hex): a new RootCA starts a new list.
    ca_fingerprint text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('root', 'device', 'frontend', 'wildcard')),
    -- Who asked: the CLI (`ca issue`) or the roll-out to a device.
    source text NOT NULL CHECK (source IN ('cli', 'rollout')),
    common_name text NOT NULL,
    dns_names text[] NOT NULL DEFAULT '{}',
    ip_addresses text[] NOT NULL DEFAULT '{}',
    -- The inventory device the certificate was issued to (kept when the device is removed).
    device_mac text,
    not_before timestamptz NOT NULL,
    not_after timestamptz NOT NULL,
    issued_at timestamptz NOT NULL DEFAULT now(),
    certificate bytea NOT NULL,
    revoked_at timestamptz,
    revocation_reason text
);
CREATE INDEX ca_certificates_revoked ON ca_certificates (ca_fingerprint) WHERE revoked_at IS NOT NULL;
CREATE INDEX ca_certificates_device ON ca_certificates (device_mac);

CREATE TABLE certificate_rollouts (
    mac text PRIMARY KEY REFERENCES devices (mac) ON DELETE CASCADE,
    state text NOT NULL CHECK (state IN (
        'querying',    -- asked the device for its certificates, waiting for the upload
        'current',     -- the device has a valid provider certificate
        'requesting',  -- it needs one: the next poll makes it create a signing request
        'fetching',    -- asked it to upload the request (and any X509/REQUESTERROR)
        'signed',      -- the request matched and was signed; the next poll pushes the chain
        'installing',  -- chain pushed, request cleaned up, waiting for the confirming query
        'error',       -- the device reported X509/REQUESTERROR; stopped until reset
        'refused'      -- its request did not match the inventory; stopped until reset
    )),
    -- The device's certificate as its last query reported it.
    device_subject text,
    device_issuer text,
    device_not_after timestamptz,
    queried_at timestamptz,
    -- What the request must carry (fixed when the request is asked for).
    common_name text,
    dns_names text[] NOT NULL DEFAULT '{}',
    ip_addresses text[] NOT NULL DEFAULT '{}',
    -- The chain to push (hex DER, device certificate first) and its serial.
    chain_hex text[] NOT NULL DEFAULT '{}',
    serial text,
    -- Polls spent in the current state (a device that never answers ends in 'error').
    attempts integer NOT NULL DEFAULT 0,
    error text,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX certificate_rollouts_state ON certificate_rollouts (state);
