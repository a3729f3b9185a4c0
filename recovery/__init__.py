"""Recovery after a crash: replay a ring image's valid chain into the store, exactly once."""
