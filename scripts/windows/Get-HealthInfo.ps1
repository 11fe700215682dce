# The health check's question to the VM: does powershell.exe answer, and what time is it there?
# Prints the PowerShell version, then the VM's clock in UTC (ISO 8601) on a line of its own.
param()

Write-Output ('PSVersion ' + $PSVersionTable.PSVersion.ToString())
Write-Output ([DateTime]::UtcNow.ToString('o'))
