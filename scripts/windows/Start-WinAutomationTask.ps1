# Start a scheduled task that runs in the logged-on user's session (the Playwright server, say).
# Processes started straight from an SSH session die with it and have no desktop: the task runs
# them in the interactive session instead. Fails (exit 1) when the task is not registered.
param([Parameter(Mandatory = $true)][string]$TaskName)

Start-ScheduledTask -TaskName $TaskName
