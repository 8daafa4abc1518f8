-- Accounts of people and systems that call pbxfront (operators, directory readers, event senders,
-- providers). Passwords are argon2id hashes; tokens are stored as SHA-256 of the token.
CREATE TABLE accounts (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$'),
    roles text[] NOT NULL CHECK (roles <@ ARRAY['admin', 'operator', 'directory-reader',
                                                 'event-sender', 'provider']::text[]
                                 AND cardinality(roles) > 0),
    password_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    token_sha256 bytea PRIMARY KEY,
    account text NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX api_tokens_account ON api_tokens (account);
