#!/usr/bin/env bash
# Host packages of the VM tier; scripts/install-deps.sh calls this (same as scripts/ci-vm-deps.sh).
exec "$(dirname "$0")/../ci-vm-deps.sh" "$@"
