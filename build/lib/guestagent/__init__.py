"""guestagent: a drop-in reimplementation of the Azure Linux guest agent."""

from guestagent.version import AGENT_VERSION, GUESTAGENT_VERSION

__all__ = ["AGENT_VERSION", "GUESTAGENT_VERSION"]
