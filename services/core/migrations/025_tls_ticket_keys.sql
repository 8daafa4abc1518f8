-- TLS session-ticket keys shared by every node (issue 18, core/ticketstore.py): one current key
-- per listener name, so a device's ticket resumes after a restart and on another Frontend. The
-- first node to start inserts the row (INSERT ... ON CONFLICT DO NOTHING, then SELECT); a node
-- that finds it older than tls.ticket_key_rotation_hours replaces it (an UPDATE conditioned on
-- the age, so one node wins). No constraint on the key: a damaged row (NULL, wrong length) is
-- read, refused with a log line and ignored by the code, which keeps its last good key; the next
-- rotation (or deleting the row) replaces it. The key is a secret: never log or export it.
CREATE TABLE tls_ticket_keys (
    listener text PRIMARY KEY,
    -- 80 bytes: key name, HMAC key, AES key (core/ticketkeys.py, KEY_LENGTH).
    key bytea,
    created_at timestamptz NOT NULL DEFAULT now()
);
