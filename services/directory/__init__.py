"""The directory service: each customer's contacts over LDAP(S) (issue #10)."""
