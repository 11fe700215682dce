# Get-DesktopState.ps1: is the VM's desktop usable for GUI work? Prints one JSON line:
#   {"state": "unlocked"|"locked"|"no-user", "session": N, "user": "DOMAIN\\name"|null,
#    "logonui": bool, "explorer": bool}
# The console session is the one on the VM's screen (WTSGetActiveConsoleSessionId; 4294967295
# when none is attached). Nobody is logged on when no explorer.exe runs there (the sign-in screen
# shows LogonUI.exe too); the desktop is locked when explorer.exe runs there and so does
# LogonUI.exe (the lock screen). Read-only.
param()

Add-Type -Namespace WinAutomation -Name Wts -MemberDefinition @'
[System.Runtime.InteropServices.DllImport("kernel32.dll")]
public static extern uint WTSGetActiveConsoleSessionId();
'@
$session = [int64][WinAutomation.Wts]::WTSGetActiveConsoleSessionId()

$inSession = { param($name) @(Get-CimInstance Win32_Process -Filter "Name='$name'" |
    Where-Object { [int64]$_.SessionId -eq $session }) }
$explorer = & $inSession 'explorer.exe'
$logonui = & $inSession 'LogonUI.exe'

$user = $null
foreach ($process in $explorer) {
    $owner = Invoke-CimMethod -InputObject $process -MethodName GetOwner
    if ($owner.ReturnValue -eq 0 -and $owner.User) { $user = "$($owner.Domain)\$($owner.User)"; break }
}

if ($session -eq 4294967295 -or $null -eq $user) { $state = 'no-user' }
elseif ($logonui.Count -gt 0) { $state = 'locked' }
else { $state = 'unlocked' }

[ordered]@{
    state    = $state
    session  = $session
    user     = $user
    logonui  = $logonui.Count -gt 0
    explorer = $explorer.Count -gt 0
} | ConvertTo-Json -Compress
