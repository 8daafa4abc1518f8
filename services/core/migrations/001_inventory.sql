-- The inventory (services/core/inventory.py): Frontends, customers, devices and layered update
-- variables. Every committed change bumps inventory_state.version once per transaction and sends
-- NOTIFY pbxfront_inventory (payload: the new version) so caches elsewhere can be invalidated.
-- Keep frequently written device status out of these tables: every write here takes the one
-- inventory_state row lock until commit.

CREATE TABLE frontends (
    -- Same rule as settings.frontend (core/config.py).
    id text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    public_address text NOT NULL CHECK (public_address <> ''),
    internal_address text NOT NULL CHECK (internal_address <> ''),
    -- The seed's sbc index: sbc<index>.<h-domain> names this Frontend in DNS.
    sbc_index integer NOT NULL UNIQUE CHECK (sbc_index BETWEEN 0 AND 9999),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Ids end up in file and DNS names; two that differ only in case would collide there.
CREATE UNIQUE INDEX frontends_id_lower ON frontends (lower(id));

CREATE TABLE customers (
    -- The seed's customer id: "safe" ASCII (Kuenkel00001); never a path separator.
    id text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    -- Deferrable so a declarative apply can move and remove rows in any order within one
    -- transaction; checked at commit there, immediately everywhere else.
    frontend text NOT NULL
        CONSTRAINT customers_frontend_fkey REFERENCES frontends (id) DEFERRABLE INITIALLY IMMEDIATE,
    name text NOT NULL,
    -- The customer's e-mail domain (seed: "System Name"); need not be unique.
    system_name text NOT NULL,
    country_code text NOT NULL CHECK (country_code ~ '^[1-9][0-9]{0,2}$'),
    area_code text NOT NULL CHECK (area_code ~ '^[0-9]{0,8}$'),
    international_prefix text NOT NULL DEFAULT '00' CHECK (international_prefix ~ '^[0-9]{1,4}$'),
    national_prefix text NOT NULL DEFAULT '0' CHECK (national_prefix ~ '^[0-9]{0,4}$'),
    subscriber_number text CHECK (subscriber_number ~ '^[0-9]{1,15}$'),
    -- Secrets (seed "Passwords": customer registration / login password).
    registration_password text,
    login_password text,
    allow_claimed_secrets boolean NOT NULL DEFAULT false,
    allow_anonymous_backup boolean NOT NULL DEFAULT false,
    allow_anonymous_contacts boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX customers_id_lower ON customers (lower(id));
CREATE INDEX customers_frontend ON customers (frontend);

CREATE TABLE devices (
    mac text PRIMARY KEY CHECK (mac ~ '^[0-9a-f]{12}$'),
    -- IP232-01-02-03: model plus the MAC's last three bytes (protocol.md §3).
    hardware_id text NOT NULL CHECK (hardware_id ~ '^[A-Z][A-Z0-9]{1,15}-[0-9a-f]{2}-[0-9a-f]{2}-[0-9a-f]{2}$'),
    device_type text NOT NULL CHECK (device_type ~ '^[A-Z][A-Z0-9_]{0,31}$'),
    device_class text NOT NULL CHECK (device_class IN ('phone', 'gateway', 'pbx')),
    customer text NOT NULL
        CONSTRAINT devices_customer_fkey REFERENCES customers (id) DEFERRABLE INITIALLY IMMEDIATE,
    -- Seed: customer id plus a sequential number (Kuenkel00001-001), the registration name.
    cpe_id text CHECK (cpe_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT devices_hardware_id_key UNIQUE (hardware_id) DEFERRABLE INITIALLY IMMEDIATE,
    CONSTRAINT devices_cpe_id_key UNIQUE (cpe_id) DEFERRABLE INITIALLY IMMEDIATE,
    CONSTRAINT devices_hardware_id_matches_mac CHECK (
        right(hardware_id, 8) = substr(mac, 7, 2) || '-' || substr(mac, 9, 2) || '-' || substr(mac, 11, 2)
    )
);
CREATE INDEX devices_customer ON devices (customer);

-- Update variables (#(name) in the scripts), resolved global < frontend < customer <
-- device_class < device_type < device. scope: '' (global), a Frontend id, a customer id, a device
-- class, an upper-case device type or a MAC. Rows of the frontend/customer/device layers belong to
-- their row (generated foreign-key columns, deleted with it); class and type layers stand alone.
CREATE TABLE variables (
    layer text NOT NULL CHECK (
        layer IN ('global', 'frontend', 'customer', 'device_class', 'device_type', 'device')
    ),
    scope text NOT NULL,
    name text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    -- protocol.md §2: scripts are line based, a control character would inject a command.
    value text NOT NULL CHECK (value !~ '[\x01-\x1f\x7f-\x9f]'),
    secret boolean NOT NULL DEFAULT false,
    frontend text GENERATED ALWAYS AS (CASE WHEN layer = 'frontend' THEN scope END) STORED
        REFERENCES frontends (id) ON DELETE CASCADE,
    customer text GENERATED ALWAYS AS (CASE WHEN layer = 'customer' THEN scope END) STORED
        REFERENCES customers (id) ON DELETE CASCADE,
    device text GENERATED ALWAYS AS (CASE WHEN layer = 'device' THEN scope END) STORED
        REFERENCES devices (mac) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (layer, scope, name),
    CONSTRAINT variables_scope_fits_layer CHECK (
        (layer = 'global' AND scope = '')
        OR (layer IN ('frontend', 'customer', 'device') AND scope <> '')
        OR (layer = 'device_class' AND scope IN ('phone', 'gateway', 'pbx'))
        OR (layer = 'device_type' AND scope ~ '^[A-Z][A-Z0-9_]{0,31}$')
    )
);
CREATE INDEX variables_frontend ON variables (frontend) WHERE frontend IS NOT NULL;
CREATE INDEX variables_customer ON variables (customer) WHERE customer IS NOT NULL;
CREATE INDEX variables_device ON variables (device) WHERE device IS NOT NULL;

-- One row: the inventory version, for cache keys (inventory.inventory_version).
CREATE TABLE inventory_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version bigint NOT NULL DEFAULT 0,
    -- The transaction that bumped version last: one bump (and one NOTIFY) per transaction.
    changed_in xid8
);
INSERT INTO inventory_state (singleton, version) VALUES (true, 0);

CREATE FUNCTION inventory_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE FUNCTION inventory_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    new_version bigint;
BEGIN
    UPDATE inventory_state SET version = version + 1, changed_in = pg_current_xact_id()
        WHERE changed_in IS DISTINCT FROM pg_current_xact_id()
        RETURNING version INTO new_version;
    IF new_version IS NOT NULL THEN
        -- Delivered on commit only, so listeners never see a change that was rolled back.
        PERFORM pg_notify('pbxfront_inventory', new_version::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER frontends_touch BEFORE UPDATE ON frontends
    FOR EACH ROW EXECUTE FUNCTION inventory_touch();
CREATE TRIGGER customers_touch BEFORE UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION inventory_touch();
CREATE TRIGGER devices_touch BEFORE UPDATE ON devices
    FOR EACH ROW EXECUTE FUNCTION inventory_touch();
CREATE TRIGGER variables_touch BEFORE UPDATE ON variables
    FOR EACH ROW EXECUTE FUNCTION inventory_touch();

CREATE TRIGGER frontends_changed AFTER INSERT OR UPDATE OR DELETE ON frontends
    FOR EACH ROW EXECUTE FUNCTION inventory_changed();
CREATE TRIGGER customers_changed AFTER INSERT OR UPDATE OR DELETE ON customers
    FOR EACH ROW EXECUTE FUNCTION inventory_changed();
CREATE TRIGGER devices_changed AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION inventory_changed();
CREATE TRIGGER variables_changed AFTER INSERT OR UPDATE OR DELETE ON variables
    FOR EACH ROW EXECUTE FUNCTION inventory_changed();
