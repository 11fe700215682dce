"""Artifact folders: the writer with its sha256 manifest, verification, copying and retention.
Imports only core; fetching from the VM is an operation (win_automation.operations.artifacts)."""
