-- The CA key on one signing node only (ca.signer): a node without it checks a device's signing
-- request as before and queues it here; the signing node signs it (woken by NOTIFY
-- pbxfront_ca_requests, and a sweep every ca.queue_interval seconds), records the certificate
-- in ca_certificates and moves the device's roll-out to 'signed', so its next poll on any node
-- installs it. The signing node also stores the CRL here for nodes that cannot sign one.

CREATE TABLE ca_signing_requests (
    id bigserial PRIMARY KEY,
    mac text NOT NULL REFERENCES devices (mac) ON DELETE CASCADE,
    -- The RootCA the request is for (SHA-256 of its certificate): only it may sign it.
    ca_fingerprint text NOT NULL CHECK (ca_fingerprint ~ '^[0-9a-f]{64}$'),
    -- The PKCS#10 request (DER), checked against these names before it was queued.
    request bytea NOT NULL CHECK (length(request) <= 65536),
    common_name text NOT NULL,
    dns_names text[] NOT NULL DEFAULT '{}',
    ip_addresses text[] NOT NULL DEFAULT '{}',
    state text NOT NULL DEFAULT 'waiting' CHECK (state IN (
        'waiting',    -- queued; no signing node took it yet
        'signed',     -- signed; serial names the certificate
        'failed',     -- the signing node could not sign it (error says why)
        'dropped'     -- the roll-out moved on (reset, a newer request) before it was signed
    )),
    requested_by text NOT NULL CHECK (length(requested_by) <= 500),
    requested_at timestamptz NOT NULL DEFAULT now(),
    signed_by text CHECK (length(signed_by) <= 500),
    done_at timestamptz,
    serial text,
    error text
);
-- One waiting request per device; the sweep takes the oldest first.
CREATE UNIQUE INDEX ca_signing_requests_waiting ON ca_signing_requests (mac) WHERE state = 'waiting';
CREATE INDEX ca_signing_requests_queue ON ca_signing_requests (requested_at) WHERE state = 'waiting';

CREATE FUNCTION ca_signing_requests_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pbxfront_ca_requests', NEW.id::text);
    RETURN NEW;
END $$;
CREATE TRIGGER ca_signing_requests_notify AFTER INSERT ON ca_signing_requests
    FOR EACH ROW EXECUTE FUNCTION ca_signing_requests_notify();

-- Signing nodes say they are alive at every sweep (`pbxfront ca queue` reports a queue nobody
-- works).
CREATE TABLE ca_signers (
    node text PRIMARY KEY CHECK (length(node) <= 500),
    ca_fingerprint text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now()
);

-- The latest CRL per RootCA, signed by a signing node; served by nodes without the key.
CREATE TABLE ca_crls (
    ca_fingerprint text PRIMARY KEY,
    crl bytea NOT NULL,
    -- Revocations it covers (count and latest time): a new revocation makes it stale.
    revoked integer NOT NULL,
    latest_revocation timestamptz,
    built_at timestamptz NOT NULL DEFAULT now()
);

-- The roll-out waits in 'queued' while its request is in the queue.
ALTER TABLE certificate_rollouts DROP CONSTRAINT certificate_rollouts_state_check;
ALTER TABLE certificate_rollouts ADD CONSTRAINT certificate_rollouts_state_check CHECK (state IN (
    'querying', 'current', 'requesting', 'fetching', 'queued', 'signed', 'installing', 'error',
    'refused'
));
