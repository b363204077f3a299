"""Running marketcare: the daemon, online backups and restore, the move to PostgreSQL."""
