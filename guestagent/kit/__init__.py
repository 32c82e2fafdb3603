"""The extension kit (``guestagent ext-test``): a handler folder driven through its contract by the agent's
own extensions code, fed by the fabric emulator over loopback. Nothing in the agent imports this room."""
