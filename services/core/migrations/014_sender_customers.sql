-- Event-sender accounts bound to the customers whose devices they may write events and backups
-- for (issue 17: tenants kept apart). A row with customer NULL: every customer. An event-sender
-- account without any row is "unbound": refused unless admin.unbound_senders_any_customer.
CREATE TABLE sender_customers (
    account text NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    customer text REFERENCES customers (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX sender_customers_unique ON sender_customers (account, COALESCE(customer, ''));
