# Install-WinAutomation.ps1: make a fresh Windows 10/11 (or Server 2019+) ready for win-automation.
# Run it once, in an elevated Windows PowerShell, as the user whose desktop GUI jobs will use:
#
#   powershell -ExecutionPolicy Bypass -File .\Install-WinAutomation.ps1 `
#       -PublicKey (Get-Content .\id_ed25519.pub) -RemoteAddress 10.0.2.2
#
# It sets up, each step only when it is not already so:
#   1. the OpenSSH server capability; service sshd automatic and running;
#   2. sshd's default shell: Windows PowerShell (-DefaultShell Cmd keeps cmd.exe);
#   3. -PublicKey in C:\ProgramData\ssh\administrators_authorized_keys, whose ACL sshd demands:
#      SYSTEM and Administrators only, no inheritance (set by SID: group names are localized);
#   4. inbound firewall rules WinAutomation-SSH/-AlohaServer/-AlohaClient/-Playwright for 22, 7887,
#      7888, 9323, scoped to -RemoteAddress (Set-FirewallRules.ps1 beside this file does that);
#   5. C:\ProgramData\win-automation\artifacts and ...\playwright: SYSTEM, Administrators and
#      -DesktopUser only;
#   6. a desktop GUI jobs can use: no display sleep, no system sleep, no password on wake, no
#      machine inactivity lock, no password-protected screen saver for this user;
#   7. only with -EnableAutologon: Windows signs -AutologonUser in at boot. RISK: Windows keeps the
#      password in plain text in the registry (HKLM\...\Winlogon DefaultPassword), readable by every
#      administrator and by anyone with the disk image. Use a dedicated low-value account.
#
# Every step prints one line: "changed", "ok" (already so) or "would change" (with -WhatIf, which
# changes nothing). The last line says how many changes were made; a second run makes none.
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [Parameter(Mandatory = $true)][string]$PublicKey,
    [string]$RemoteAddress = 'Any',
    [ValidateSet('PowerShell', 'Cmd')][string]$DefaultShell = 'PowerShell',
    [string]$DesktopUser = "$env:USERDOMAIN\$env:USERNAME",
    [string]$DataRoot = "$env:ProgramData\win-automation",
    [switch]$EnableAutologon,
    [string]$AutologonUser = $env:USERNAME,
    [string]$AutologonDomain = $env:USERDOMAIN,
    [securestring]$AutologonPassword
)

$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$script:Cmdlet = $PSCmdlet
$script:Changes = 0
$script:Pending = 0

$identity = [Security.Principal.WindowsIdentity]::GetCurrent()
if (-not ([Security.Principal.WindowsPrincipal]$identity).IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    throw 'Install-WinAutomation.ps1 must run elevated (Run as Administrator).'
}
$key = $PublicKey.Trim()
if ($key -notmatch '^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com)\s+[A-Za-z0-9+/=]+(\s.*)?$') {
    throw "-PublicKey: not an OpenSSH public key line (type, base64, optional comment): '$key'"
}

function Write-Step([string]$Status, [string]$What, [string]$Detail) {
    Write-Output ('{0,-13}{1}: {2}' -f $Status, $What, $Detail)
}

# Run $Action when it is wanted (not -WhatIf, and confirmed under -Confirm); report either way.
function Invoke-Change([string]$What, [string]$Detail, [scriptblock]$Action) {
    if ($script:Cmdlet.ShouldProcess($What, $Detail)) {
        & $Action
        $script:Changes++
        Write-Step 'changed' $What $Detail
    } else {
        $script:Pending++
        Write-Step 'would change' $What $Detail
    }
}

function Set-RegistryValue([string]$Path, [string]$Name, $Value, [string]$Type, [string]$Shown) {
    $current = (Get-ItemProperty -LiteralPath $Path -Name $Name -ErrorAction SilentlyContinue).$Name
    if ($null -ne $current -and [string]$current -eq [string]$Value) {
        Write-Step 'ok' "$Path\$Name" $Shown
        return
    }
    Invoke-Change "$Path\$Name" "set to $Shown" {
        if (-not (Test-Path -LiteralPath $Path)) { New-Item -Path $Path -Force | Out-Null }
        New-ItemProperty -LiteralPath $Path -Name $Name -Value $Value -PropertyType $Type -Force | Out-Null
    }
}

# An ACL of exactly these (SID, rights) pairs, inheritance from the parent cut off.
function Set-ExactAcl([string]$Path, [hashtable]$Grants, [bool]$Container) {
    $acl = Get-Acl -LiteralPath $Path
    $flags = if ($Container) { 'ContainerInherit, ObjectInherit' } else { 'None' }
    $want = @($Grants.GetEnumerator() | ForEach-Object { "$($_.Key)=$($_.Value)" } | Sort-Object)
    $have = @($acl.Access | ForEach-Object {
            $sid = $_.IdentityReference.Translate([Security.Principal.SecurityIdentifier]).Value
            "$sid=$($_.FileSystemRights)$(if ($_.IsInherited) { '(inherited)' })$(if ([string]$_.AccessControlType -ne 'Allow') { '(deny)' })"
        } | Sort-Object)
    if ($acl.AreAccessRulesProtected -and (($have -join ';') -eq ($want -join ';'))) {
        Write-Step 'ok' $Path 'access: SYSTEM, Administrators and the named users only'
        return
    }
    Invoke-Change $Path "access limited to $($want -join ', ')" {
        $new = if ($Container) { New-Object Security.AccessControl.DirectorySecurity } else { New-Object Security.AccessControl.FileSecurity }
        $new.SetAccessRuleProtection($true, $false)
        $new.SetOwner([Security.Principal.SecurityIdentifier]'S-1-5-32-544')
        foreach ($grant in $Grants.GetEnumerator()) {
            $sid = [Security.Principal.SecurityIdentifier]$grant.Key
            $rule = New-Object Security.AccessControl.FileSystemAccessRule($sid, $grant.Value, $flags, 'None', 'Allow')
            $new.AddAccessRule($rule)
        }
        Set-Acl -LiteralPath $Path -AclObject $new
    }
}

$Admins = 'S-1-5-32-544'
$System = 'S-1-5-18'

# 1. OpenSSH server
$capability = Get-WindowsCapability -Online -Name 'OpenSSH.Server*' | Select-Object -First 1
if ($null -eq $capability) { throw 'this Windows offers no OpenSSH.Server capability (Windows 10 1809+ or Server 2019+ needed)' }
if ([string]$capability.State -eq 'Installed') {
    Write-Step 'ok' 'OpenSSH server' "$($capability.Name) installed"
} else {
    Invoke-Change 'OpenSSH server' "Add-WindowsCapability $($capability.Name)" {
        Add-WindowsCapability -Online -Name $capability.Name | Out-Null
    }
}
$sshd = Get-Service -Name sshd -ErrorAction SilentlyContinue
if ($null -eq $sshd -and $WhatIfPreference) {
    Write-Step 'would change' 'service sshd' 'startup type Automatic, started (once installed)'
    $script:Pending++
} else {
    if ([string]$sshd.StartType -eq 'Automatic') {
        Write-Step 'ok' 'service sshd' 'startup type Automatic'
    } else {
        Invoke-Change 'service sshd' "startup type Automatic (was $($sshd.StartType))" {
            Set-Service -Name sshd -StartupType Automatic
        }
    }
    if ([string](Get-Service -Name sshd).Status -eq 'Running') {
        Write-Step 'ok' 'service sshd' 'running'
    } else {
        Invoke-Change 'service sshd' 'started' { Start-Service -Name sshd }
    }
}

# 2. Default shell
$shellPath = if ($DefaultShell -eq 'PowerShell') {
    "$env:SystemRoot\System32\WindowsPowerShell\v1.0\powershell.exe"
} else {
    "$env:SystemRoot\System32\cmd.exe"
}
Set-RegistryValue 'HKLM:\SOFTWARE\OpenSSH' 'DefaultShell' $shellPath 'String' $shellPath

# 3. The administrator's key and its ACL
$sshDir = "$env:ProgramData\ssh"
$keysFile = Join-Path $sshDir 'administrators_authorized_keys'
$keyId = ($key -split '\s+')[0..1] -join ' '
$present = (Test-Path -LiteralPath $keysFile) -and
    @(Get-Content -LiteralPath $keysFile | Where-Object { (($_.Trim() -split '\s+')[0..1] -join ' ') -eq $keyId }).Count -gt 0
if ($present) {
    Write-Step 'ok' $keysFile 'holds the key'
} else {
    Invoke-Change $keysFile "add key $($keyId.Substring(0, [Math]::Min(40, $keyId.Length)))..." {
        if (-not (Test-Path -LiteralPath $sshDir)) { New-Item -ItemType Directory -Path $sshDir -Force | Out-Null }
        $text = if (Test-Path -LiteralPath $keysFile) { [IO.File]::ReadAllText($keysFile) } else { '' }
        if ($text.Length -gt 0 -and -not $text.EndsWith("`n")) { $text += "`r`n" }
        [IO.File]::WriteAllText($keysFile, $text + $key + "`r`n", (New-Object Text.UTF8Encoding($false)))
    }
}
if (Test-Path -LiteralPath $keysFile) {
    Set-ExactAcl $keysFile @{ $Admins = 'FullControl'; $System = 'FullControl' } $false
}

# 4. Firewall rules (one source: Set-FirewallRules.ps1 creates by -Name, updates in place)
$firewall = Join-Path $PSScriptRoot 'Set-FirewallRules.ps1'
if (-not (Test-Path -LiteralPath $firewall)) { throw "Set-FirewallRules.ps1 must sit beside this script ($firewall)" }
if ($WhatIfPreference) {
    Write-Step 'would change' 'firewall' "Set-FirewallRules.ps1 -RemoteAddress $RemoteAddress (creates or updates only what differs)"
    $script:Pending++
} else {
    foreach ($line in (& $firewall -RemoteAddress $RemoteAddress)) {
        $rule = $line | ConvertFrom-Json
        $status = if ($rule.action -eq 'unchanged') { 'ok' } else { 'changed' }
        if ($status -eq 'changed') { $script:Changes++ }
        Write-Step $status "firewall rule $($rule.firewall_rule)" "$($rule.action): TCP $($rule.port) from $($rule.remote_address)"
    }
}

# 5. Data folders
$desktopSid = ([Security.Principal.NTAccount]$DesktopUser).Translate([Security.Principal.SecurityIdentifier]).Value
$grants = @{ $Admins = 'FullControl'; $System = 'FullControl' }
if ($desktopSid -ne $Admins -and $desktopSid -ne $System) { $grants[$desktopSid] = 'Modify, Synchronize' }
foreach ($dir in @($DataRoot, (Join-Path $DataRoot 'artifacts'), (Join-Path $DataRoot 'playwright'))) {
    if (Test-Path -LiteralPath $dir -PathType Container) {
        Write-Step 'ok' $dir 'exists'
    } else {
        Invoke-Change $dir 'create folder' { New-Item -ItemType Directory -Path $dir -Force | Out-Null }
    }
    if (Test-Path -LiteralPath $dir -PathType Container) { Set-ExactAcl $dir $grants $true }
}

# 6. A desktop GUI jobs can use
function Set-PowerValue([string]$Subgroup, [string]$Setting, [string]$Shown) {
    $query = (& powercfg.exe /query SCHEME_CURRENT $Subgroup $Setting) -join "`n"
    $values = @([regex]::Matches($query, ':\s*0x([0-9a-fA-F]+)\s*$', 'Multiline') | ForEach-Object { [Convert]::ToInt64($_.Groups[1].Value, 16) })
    $ac, $dc = if ($values.Count -ge 2) { $values[-2], $values[-1] } else { -1, -1 }
    if ($ac -eq 0 -and $dc -eq 0) {
        Write-Step 'ok' "power $Setting" "$Shown (mains and battery)"
        return
    }
    Invoke-Change "power $Setting" "$Shown (mains and battery)" {
        & powercfg.exe /setacvalueindex SCHEME_CURRENT $Subgroup $Setting 0
        & powercfg.exe /setdcvalueindex SCHEME_CURRENT $Subgroup $Setting 0
        & powercfg.exe /setactive SCHEME_CURRENT
    }
}
Set-PowerValue 'SUB_VIDEO' 'VIDEOIDLE' 'display never turns off'
Set-PowerValue 'SUB_SLEEP' 'STANDBYIDLE' 'never sleeps'
Set-PowerValue 'SUB_NONE' 'CONSOLELOCK' 'no password on wake'
Set-RegistryValue 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System' 'InactivityTimeoutSecs' 0 'DWord' '0 (no machine inactivity lock)'
Set-RegistryValue 'HKCU:\Control Panel\Desktop' 'ScreenSaveActive' '0' 'String' '0 (no screen saver)'
Set-RegistryValue 'HKCU:\Control Panel\Desktop' 'ScreenSaverIsSecure' '0' 'String' '0 (no password after a screen saver)'

# 7. Autologon, only on request
$winlogon = 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion\Winlogon'
if ($EnableAutologon) {
    if ($null -eq $AutologonPassword) {
        $AutologonPassword = Read-Host -AsSecureString "password of $AutologonDomain\$AutologonUser (stored in plain text in the registry)"
    }
    $plain = [Runtime.InteropServices.Marshal]::PtrToStringBSTR([Runtime.InteropServices.Marshal]::SecureStringToBSTR($AutologonPassword))
    Write-Warning 'autologon keeps the password in plain text in HKLM Winlogon DefaultPassword: use a dedicated account'
    Set-RegistryValue $winlogon 'AutoAdminLogon' '1' 'String' '1'
    Set-RegistryValue $winlogon 'DefaultUserName' $AutologonUser 'String' $AutologonUser
    Set-RegistryValue $winlogon 'DefaultDomainName' $AutologonDomain 'String' $AutologonDomain
    Set-RegistryValue $winlogon 'DefaultPassword' $plain 'String' '(the password)'
} else {
    $auto = (Get-ItemProperty -LiteralPath $winlogon -Name AutoAdminLogon -ErrorAction SilentlyContinue).AutoAdminLogon
    Write-Step 'ok' 'autologon' "left as it is (AutoAdminLogon=$(if ($null -eq $auto) { 'unset' } else { $auto })); -EnableAutologon sets it"
}

if ($WhatIfPreference) {
    Write-Output "what if: $script:Pending change(s) would be made; nothing was changed"
} elseif ($script:Changes -eq 0) {
    Write-Output 'nothing changed: this VM was already set up'
} else {
    Write-Output "done: $script:Changes change(s) made; a second run changes nothing"
}
