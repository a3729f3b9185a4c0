"""The daemon: ring records to a PASS-style provenance graph in SQLite, exactly once."""
