"""The WireServer protocol room: the facade (:mod:`guestagent.protocol.wire`), the goal-state documents and
their update cycle, the HostGAPlugin, certificates, status and history. This file is the package's face
only: import the module that holds what you need."""
