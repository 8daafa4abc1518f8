-- Contacts (services/contacts/): every accepted contacts.csv upload becomes a version of the
-- customer's directory; contact_current names the version the directory serves. Making a version
-- current (upload or rollback) sends NOTIFY pbxfront_contacts (payload: the customer id) in the
-- same transaction, so the directory service (services/directory/) sees it on commit.
-- The directory service reads contact_current and contact_entries: keep those columns stable.

CREATE TABLE contact_versions (
    customer text NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    version integer NOT NULL CHECK (version > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Who uploaded: the customer id, an account name, or 'anonymous'.
    uploaded_by text NOT NULL,
    source_address text,
    -- The uploaded file as received (SHA-256) and how it was read.
    source_sha256 bytea NOT NULL CHECK (octet_length(source_sha256) = 32),
    source_encoding text NOT NULL,
    accepted integer NOT NULL CHECK (accepted >= 0),
    rejected integer NOT NULL CHECK (rejected >= 0),
    PRIMARY KEY (customer, version)
);

CREATE TABLE contact_entries (
    customer text NOT NULL,
    version integer NOT NULL,
    -- Line number of the record in the uploaded file (1 = the header line).
    line integer NOT NULL CHECK (line > 1),
    surname text NOT NULL DEFAULT '',
    given_name text NOT NULL DEFAULT '',
    company text NOT NULL DEFAULT '',
    -- As uploaded, and normalised: E.164 ("+497031730090"), or the digits of a short internal
    -- number where the customer's policy allows those; NULL when the field was empty.
    business_phone text NOT NULL DEFAULT '',
    business_e164 text,
    mobile_phone text NOT NULL DEFAULT '',
    mobile_e164 text,
    PRIMARY KEY (customer, version, line),
    FOREIGN KEY (customer, version) REFERENCES contact_versions (customer, version)
        ON DELETE CASCADE
);

CREATE TABLE contact_current (
    customer text PRIMARY KEY REFERENCES customers (id) ON DELETE CASCADE,
    version integer NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (customer, version) REFERENCES contact_versions (customer, version)
);
