-- marketcare on PostgreSQL with two roles: the owner migrates, the application only
-- appends to history. Run as the owner role, in the marketcare database, after the
-- first `marketcare init` made the schema (docs/operations.md, "Append-only history"):
--
--   psql -v owner=marketcare_owner -v app=marketcare -d marketcare -f postgresql-roles.sql
--
-- Safe to run again (after an upgrade, say).

GRANT USAGE ON SCHEMA public TO :"app";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app";

-- history: the application may add to it and read it, never change or remove it
REVOKE UPDATE, DELETE, TRUNCATE ON events, completions, audit_timestamps FROM :"app";
-- and never take part in what only the owner does
REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA public FROM :"app";

-- tables that later migrations make get the same rights (events-like tables are
-- revoked above by name; a new one would be added here)
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app";
