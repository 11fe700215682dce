"""Operations: what a step does on the VM (commands, PowerShell wrapping, transfers, artifact
fetching), around `operations.vm.Vm`, the one object that stands for the VM. They import adapters,
the job record, artifacts and core; never engines, workflows or the CLI."""
