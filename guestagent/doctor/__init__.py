"""``guestagent doctor``: support's first questions about this VM, answered by one read-only command."""
