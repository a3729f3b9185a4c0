"""What examiners and auditors run against a store: query, export, verify, status.

It reads through ``store`` and never imports the daemon's internals; verify replays the
analyzer through the one named entry point ``daemon.replay``.
"""
