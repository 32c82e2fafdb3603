"""Version identities.

To the platform the agent is WALinuxAgent at the upstream version whose behaviour it implements;
our own name and version are printed beside it by ``waagent -version``.
"""

AGENT_NAME = "WALinuxAgent"
AGENT_VERSION = "2.15.0.1"
AGENT_LONG_NAME = f"{AGENT_NAME}-{AGENT_VERSION}"
GUESTAGENT_NAME = "guestagent"
GUESTAGENT_VERSION = "0.1.0"
PROTOCOL_VERSION = "2012-11-30"
#: Environment marker upstream sets on every OS command it runs (the cgroup process check reads it).
AGENT_ENV_MARKER = ("AZURE_GUEST_AGENT_PARENT_PROCESS_NAME", "AZURE_GUEST_AGENT")
