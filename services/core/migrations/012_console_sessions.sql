-- Operator console sessions (services/console/): server-side, looked up by the SHA-256 of the
-- cookie value (the cookie alone is useless without this row, and the row alone reveals no
-- cookie). A session ends at expires_at, after idle_seconds without a request, at logout, or
-- when its account changes (password or roles: accounts.updated_at moves past created_at).
CREATE TABLE console_sessions (
    token_sha256 bytea PRIMARY KEY CHECK (octet_length(token_sha256) = 32),
    account text NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    -- The synchroniser token every state-changing form carries back.
    csrf_token text NOT NULL,
    source_address text,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_account ON console_sessions (account);
CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at);
