"""The ledger: the database and every unit of work on it (materialise, sweep, tick,
problems, accounts, evidence, the audit chain), callable from the daemon, the CLI and
the web alike. It imports only the domain below it."""
