# Install-PlaywrightServer.ps1: the Playwright browser server of `win-automation playwright install`.
# Idempotent: each part is compared with what is there and changed only when it differs; the last
# line of output is one JSON object:
#   {"changed": ["driver", "ws-path", "config", "firewall", "task", "started", ...],
#    "ws_path": "...", "task_state": "Running", "dir": "...", "log_tail": "..."}
# (the host reads ws_path from it, prints the export line once and never logs it).
#
# $Dir already holds, uploaded by the host: the `playwright` win_amd64 wheel ($Wheel) and
# launch-server.js. This script:
#  1. extracts the wheel's playwright/driver/ (node.exe and playwright-core) to driver-$Version\;
#  2. checks the browser: Edge for channel msedge, else installs Playwright's Chromium on the VM;
#  3. writes a fresh random wsPath to ws-path when there is none (or -Rotate), readable by
#     Administrators and SYSTEM only (icacls with SIDs: group names are localized);
#  4. writes server.json for launch-server.js (bind address, port, channel, headless, log file);
#  5. with -AllowFrom, keeps the inbound firewall rule WinAutomation-Playwright (fixed -Name, so
#     it is found again; -Profile Any) open to that address only: the port's only protection;
#  6. registers the scheduled task WinAutomation-Playwright in the logged-on user's interactive
#     session (at logon, highest run level, no time limit, restarted on failure), then (re)starts
#     it when anything changed or it is not running, and waits for the port.
param(
    [Parameter(Mandatory)] [string] $Dir,
    [Parameter(Mandatory)] [string] $Wheel,
    [Parameter(Mandatory)] [string] $Version,
    [ValidateSet('msedge', 'chromium')] [string] $Channel = 'msedge',
    [ValidateSet('true', 'false')] [string] $Headless = 'true',
    [string] $BindHost = '0.0.0.0',
    [int] $Port = 9323,
    [string] $AllowFrom = '',  # an address, 'ssh-client' (the SSH client's), or '' (no rule)
    [ValidateSet('true', 'false')] [string] $Rotate = 'false',
    [ValidateSet('true', 'false')] [string] $Restart = 'false',
    [int] $WaitSeconds = 60
)

$TaskName = 'WinAutomation-Playwright'
if ($AllowFrom -eq 'ssh-client') { $AllowFrom = ($env:SSH_CLIENT -split ' ')[0] }  # the host, as the VM sees it
$RuleName = 'WinAutomation-Playwright'
$changed = [System.Collections.Generic.List[string]]::new()
$Dir = [System.IO.Path]::GetFullPath($Dir)
$driver = Join-Path $Dir "driver-$Version"
$node = Join-Path $driver 'node.exe'
$wsFile = Join-Path $Dir 'ws-path'
$configFile = Join-Path $Dir 'server.json'
$logFile = Join-Path $Dir 'server.log'

# 1. the driver: node.exe and the playwright-core of the client's version
if (-not (Test-Path -LiteralPath (Join-Path $driver 'package\package.json'))) {
    Add-Type -AssemblyName System.IO.Compression.FileSystem
    $staging = "$driver.partial"
    if (Test-Path -LiteralPath $staging) { Remove-Item -LiteralPath $staging -Recurse -Force }
    $zip = [System.IO.Compression.ZipFile]::OpenRead((Join-Path $Dir $Wheel))
    try {
        foreach ($entry in $zip.Entries) {
            if (-not $entry.FullName.StartsWith('playwright/driver/') -or $entry.Name -eq '') { continue }
            $target = Join-Path $staging ($entry.FullName.Substring('playwright/driver/'.Length) -replace '/', '\')
            New-Item -ItemType Directory -Force -Path (Split-Path -Parent $target) | Out-Null
            [System.IO.Compression.ZipFileExtensions]::ExtractToFile($entry, $target, $true)
        }
    } finally { $zip.Dispose() }
    if (-not (Test-Path -LiteralPath (Join-Path $staging 'node.exe'))) {
        throw "the wheel $Wheel holds no playwright/driver/node.exe: it is not the win_amd64 wheel"
    }
    Rename-Item -LiteralPath $staging -NewName (Split-Path -Leaf $driver)
    $changed.Add('driver')
}

# 2. the browser
if ($Channel -eq 'msedge') {
    $edge = @("${env:ProgramFiles(x86)}\Microsoft\Edge\Application\msedge.exe",
              "$env:ProgramFiles\Microsoft\Edge\Application\msedge.exe") | Where-Object { Test-Path -LiteralPath $_ }
    if (-not $edge) {
        throw 'Microsoft Edge is not installed on the VM; fix: install Edge, or use --channel chromium'
    }
} else {
    $env:PLAYWRIGHT_BROWSERS_PATH = Join-Path $Dir 'browsers'
    $out = & $node (Join-Path $driver 'package\cli.js') install chromium 2>&1
    if ($LASTEXITCODE -ne 0) { throw "Playwright could not install Chromium on the VM: $($out | Select-Object -Last 1)" }
    if ($out -match 'downloaded to') { $changed.Add('browser') }
}

# 3. the wsPath: random, readable by Administrators (S-1-5-32-544) and SYSTEM (S-1-5-18) only
if ($Rotate -eq 'true' -or -not (Test-Path -LiteralPath $wsFile)) {
    $bytes = [byte[]]::new(32)
    [System.Security.Cryptography.RandomNumberGenerator]::Create().GetBytes($bytes)
    $wsPath = [Convert]::ToBase64String($bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_')
    [System.IO.File]::WriteAllText($wsFile, $wsPath)
    $changed.Add('ws-path')
}
$acl = & icacls.exe $wsFile /inheritance:r /grant:r '*S-1-5-32-544:F' /grant:r '*S-1-5-18:F' 2>&1
if ($LASTEXITCODE -ne 0) { throw "icacls could not restrict $wsFile`: $acl" }
$wsPath = [System.IO.File]::ReadAllText($wsFile).Trim()

# 4. server.json
$settings = [ordered]@{
    package    = "driver-$Version\package"
    host       = $BindHost
    port       = $Port
    wsPathFile = $wsFile
    channel    = $(if ($Channel -eq 'msedge') { 'msedge' } else { $null })
    headless   = ($Headless -eq 'true')
    logFile    = $logFile
    browsersPath = $(if ($Channel -eq 'chromium') { Join-Path $Dir 'browsers' } else { $null })
} | ConvertTo-Json -Compress
$current = if (Test-Path -LiteralPath $configFile) { [System.IO.File]::ReadAllText($configFile) } else { '' }
if ($current -ne $settings) {
    [System.IO.File]::WriteAllText($configFile, $settings)
    $changed.Add('config')
}

# 5. the firewall rule, scoped to the host
if ($AllowFrom) {
    $rule = Get-NetFirewallRule -Name $RuleName -ErrorAction SilentlyContinue
    if (-not $rule) {
        New-NetFirewallRule -Name $RuleName -DisplayName 'win-automation Playwright server' -Direction Inbound `
            -Protocol TCP -LocalPort $Port -RemoteAddress $AllowFrom -Action Allow -Profile Any | Out-Null
        $changed.Add('firewall')
    } else {
        $ports = $rule | Get-NetFirewallPortFilter
        $addresses = $rule | Get-NetFirewallAddressFilter
        if ("$($ports.LocalPort)" -ne "$Port" -or "$($addresses.RemoteAddress)" -ne $AllowFrom -or
            "$($rule.Action)" -ne 'Allow' -or "$($rule.Enabled)" -ne 'True' -or "$($rule.Profile)" -ne 'Any') {
            Set-NetFirewallRule -Name $RuleName -Protocol TCP -LocalPort $Port -RemoteAddress $AllowFrom `
                -Action Allow -Enabled True -Profile Any
            $changed.Add('firewall')
        }
    }
}

# 6. the scheduled task in the logged-on user's session
$user = "$env:USERDOMAIN\$env:USERNAME"
$arguments = "`"$Dir\launch-server.js`" `"$configFile`""
$task = Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
$same = $task -and $task.Actions.Count -eq 1 -and $task.Actions[0].Execute -eq $node -and
    $task.Actions[0].Arguments -eq $arguments -and $task.Principal.LogonType -eq 'Interactive' -and
    $task.Principal.RunLevel -eq 'Highest' -and $task.Settings.ExecutionTimeLimit -eq 'PT0S'
if (-not $same) {
    $action = New-ScheduledTaskAction -Execute $node -Argument $arguments -WorkingDirectory $Dir
    $trigger = New-ScheduledTaskTrigger -AtLogOn -User $user
    $principal = New-ScheduledTaskPrincipal -UserId $user -LogonType Interactive -RunLevel Highest
    $taskSettings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit ([TimeSpan]::Zero) -RestartCount 999 `
        -RestartInterval (New-TimeSpan -Minutes 1) -MultipleInstances IgnoreNew -StartWhenAvailable `
        -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries
    Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Principal $principal `
        -Settings $taskSettings -Force | Out-Null
    $changed.Add('task')
}

$state = (Get-ScheduledTask -TaskName $TaskName).State
if ($changed.Count -gt 0 -or $Restart -eq 'true' -or "$state" -ne 'Running') {
    if ("$state" -eq 'Running') { Stop-ScheduledTask -TaskName $TaskName }
    Get-ChildItem -LiteralPath $Dir -Directory -Filter 'driver-*' |
        Where-Object { $_.FullName -ne $driver -and $_.Name -notlike '*.partial' } |
        Remove-Item -Recurse -Force -ErrorAction SilentlyContinue
    Start-ScheduledTask -TaskName $TaskName
    $changed.Add('started')
}

$listening = $false
$deadline = (Get-Date).AddSeconds($WaitSeconds)
while (-not $listening -and (Get-Date) -lt $deadline) {
    $client = [System.Net.Sockets.TcpClient]::new()
    try { $listening = $client.ConnectAsync('127.0.0.1', $Port).Wait(500) -and $client.Connected } catch { }
    finally { $client.Dispose() }
    if (-not $listening) { Start-Sleep -Milliseconds 250 }
}
$tail = if (Test-Path -LiteralPath $logFile) { (Get-Content -LiteralPath $logFile -Tail 1) -join '' } else { '' }
if (-not $listening) {
    throw "the server did not listen on port $Port within $WaitSeconds s (task $((Get-ScheduledTask -TaskName $TaskName).State)): $tail"
}

[ordered]@{
    changed    = @($changed)
    ws_path    = $wsPath
    task_state = "$((Get-ScheduledTask -TaskName $TaskName).State)"
    dir        = $Dir
    log_tail   = $tail
} | ConvertTo-Json -Compress
