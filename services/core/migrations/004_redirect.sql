-- The redirect service (services/redirect): zero-touch hand-over of factory-new devices to their
-- provider's Frontend (protocol.md §4). Providers own MAC -> target mappings; a mapping names an
-- inventory Frontend (whose staging URL is built from redirect.frontend_url) or its own URL.
-- Mappings do not reference frontends by foreign key on purpose: a declarative inventory apply
-- must never fail because some provider still points devices at a Frontend; such a mapping is
-- answered like an unknown device and logged until it is moved.

CREATE TABLE redirect_providers (
    id text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name text NOT NULL CHECK (name !~ '[\x01-\x1f\x7f-\x9f]' AND length(name) <= 200),
    -- Facts pushed to every device of the provider (mod cmd UP1 setvar r-<name> <value>);
    -- a mapping's own facts win.
    facts jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(facts) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- The single-provider installation: `pbxfront redirect register` without --provider.
INSERT INTO redirect_providers (id, name) VALUES ('local', 'this installation');

-- Provider API keys. The secret is kept because HMAC verification needs it; it is shown once,
-- when the key is created, and never returned by any API or command afterwards.
CREATE TABLE redirect_api_keys (
    id text PRIMARY KEY CHECK (id ~ '^rk_[0-9a-f]{16}$'),
    provider text NOT NULL REFERENCES redirect_providers (id) ON DELETE CASCADE,
    secret text NOT NULL,
    scopes text[] NOT NULL CHECK (
        scopes <@ ARRAY['redirect:read', 'redirect:write', 'redirect:transfer']::text[]
        AND cardinality(scopes) > 0
    ),
    description text,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX redirect_api_keys_provider ON redirect_api_keys (provider);

-- Nonces of accepted signed requests, kept until their timestamp is out of the allowed skew;
-- shared by every node, so a request replayed to another node is refused too.
CREATE TABLE redirect_nonces (
    key_id text NOT NULL,
    nonce text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (key_id, nonce)
);
CREATE INDEX redirect_nonces_expires_at ON redirect_nonces (expires_at);

CREATE TABLE redirect_mappings (
    -- innovaphone devices' serial number is their MAC (protocol.md §1: `sn=#m`).
    mac text PRIMARY KEY CHECK (mac ~ '^[0-9a-f]{12}$'),
    provider text NOT NULL REFERENCES redirect_providers (id),
    frontend text CHECK (frontend ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    url text CHECK (url ~ '^https?://[^[:space:]]+$' AND length(url) <= 512),
    facts jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(facts) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT redirect_mappings_target CHECK (frontend IS NOT NULL OR url IS NOT NULL)
);
-- Devices that identify by hardware id only (certificate CN IP232-01-02-03, `ver`): the last
-- three MAC bytes.
CREATE INDEX redirect_mappings_suffix ON redirect_mappings (right(mac, 6));
CREATE INDEX redirect_mappings_provider ON redirect_mappings (provider, mac);

-- Issued by a mapping's owner so another provider may take the device over; single use.
CREATE TABLE redirect_transfer_tokens (
    token_sha256 bytea PRIMARY KEY,
    mac text NOT NULL REFERENCES redirect_mappings (mac) ON DELETE CASCADE,
    issued_by text NOT NULL REFERENCES redirect_providers (id) ON DELETE CASCADE,
    -- NULL: any provider may use it.
    to_provider text REFERENCES redirect_providers (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX redirect_transfer_tokens_mac ON redirect_transfer_tokens (mac);
CREATE INDEX redirect_transfer_tokens_expires_at ON redirect_transfer_tokens (expires_at);

-- Every change of a mapping, kept after the mapping is gone.
CREATE TABLE redirect_history (
    id bigserial PRIMARY KEY,
    mac text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    action text NOT NULL CHECK (
        action IN ('register', 'update', 'move', 'transfer', 'deregister')
    ),
    provider text NOT NULL,
    previous_provider text,
    frontend text,
    url text,
    facts jsonb,
    -- "cli" or "key:<key id>".
    actor text NOT NULL
);
CREATE INDEX redirect_history_mac ON redirect_history (mac, id);

-- Every hand-over script sent.
CREATE TABLE redirect_handovers (
    id bigserial PRIMARY KEY,
    mac text NOT NULL,
    provider text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    source_address text,
    proof text NOT NULL CHECK (proof IN ('proven', 'claimed', 'anonymous')),
    target text NOT NULL
);
CREATE INDEX redirect_handovers_mac ON redirect_handovers (mac, id);

-- Devices that asked but are not registered (rate-limited per source address), so a provider
-- can claim them.
CREATE TABLE redirect_unknown (
    -- The MAC when known, else the hardware id.
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
CREATE INDEX redirect_unknown_last_seen ON redirect_unknown (last_seen);
