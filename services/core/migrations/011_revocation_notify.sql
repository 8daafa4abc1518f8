-- Revocations reach every node's TLS listeners within seconds (services/core/revocation.py):
-- whoever revokes a certificate (`pbxfront ca revoke`, a future API), the commit sends
-- NOTIFY pbxfront_revocations with the serial, and each process rereads its revoked set.
CREATE FUNCTION pbxfront_notify_revocation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pbxfront_revocations', NEW.serial);
    RETURN NULL;
END
$$;

CREATE TRIGGER ca_certificates_revoked_notify
    AFTER INSERT OR UPDATE OF revoked_at ON ca_certificates
    FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION pbxfront_notify_revocation();
