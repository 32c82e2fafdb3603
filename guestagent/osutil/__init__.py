"""The only code that touches the operating system.

Imports nothing: the lean modules here (``root``, ``osrelease``, ``atomic``) are importable by the
supervisor and ``waagent -version`` without loading the heavier ones.
"""
