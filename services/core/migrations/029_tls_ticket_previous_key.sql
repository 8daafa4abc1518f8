-- The previous TLS session-ticket key of each listener (issue 18, core/ticketstore.py): a
-- rotation moves the current key here and puts a new one in its place, and every node keeps
-- accepting tickets under it (where OpenSSL's ticket-key callback is proven, core/ticketkeys.py),
-- so the devices' tickets keep resuming across a rotation. NULL until the first rotation. Like
-- the key itself, no constraint: a damaged value is refused by the code (logged, not accepted).
ALTER TABLE tls_ticket_keys ADD COLUMN previous_key bytea;
