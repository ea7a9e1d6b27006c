"""Runnable examples of transferd in use; each one uses only the public client and CLI."""
