"""Persistent-memory region and the crash-durable record ring that lives in it."""
