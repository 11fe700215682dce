# Inbound firewall rules for win-automation's services, created or brought up to date idempotently.
#
# Each rule has a fixed -Name (its id): without one Windows assigns a GUID, a later
# Get-NetFirewallRule -Name never finds the rule, and every run adds a duplicate. A rule that
# exists is compared on the properties set here and updated in place with Set-NetFirewallRule
# when one differs. One line of JSON per rule says what happened: created, updated or unchanged.
#
# -RemoteAddress: the host's address as the VM sees it (10.0.2.2 with QEMU user-mode networking),
# 'ssh-client' (the default: the address of the SSH client this script runs under, i.e. the host;
# Any when not run over SSH) or Any. Install-PlaywrightServer.ps1 keeps WinAutomation-Playwright
# the same way, with the same display name, so the two never undo each other.
# Sent by `win-automation supervisor` over SSH; usable on its own in an elevated PowerShell too:
#   .\Set-FirewallRules.ps1 -RemoteAddress 10.0.2.2
param(
    [string]$RemoteAddress = 'ssh-client',
    [int]$SshPort = 22,
    [int]$AlohaServerPort = 7887,
    [int]$AlohaClientPort = 7888,
    [int]$PlaywrightPort = 9323
)

if ($RemoteAddress -eq 'ssh-client') {
    $RemoteAddress = if ($env:SSH_CLIENT) { ($env:SSH_CLIENT -split ' ')[0] } else { 'Any' }
}

$rules = @(
    @{ Name = 'WinAutomation-SSH'; DisplayName = 'win-automation OpenSSH server'; Port = $SshPort },
    @{ Name = 'WinAutomation-AlohaServer'; DisplayName = 'win-automation Aloha server'; Port = $AlohaServerPort },
    @{ Name = 'WinAutomation-AlohaClient'; DisplayName = 'win-automation Aloha client'; Port = $AlohaClientPort },
    @{ Name = 'WinAutomation-Playwright'; DisplayName = 'win-automation Playwright server'; Port = $PlaywrightPort }
)

foreach ($rule in $rules) {
    $port = [string]$rule.Port
    $existing = Get-NetFirewallRule -Name $rule.Name -ErrorAction SilentlyContinue
    if ($null -eq $existing) {
        New-NetFirewallRule -Name $rule.Name -DisplayName $rule.DisplayName -Direction Inbound `
            -Protocol TCP -LocalPort $port -RemoteAddress $RemoteAddress -Action Allow -Profile Any `
            -Enabled True | Out-Null
        $action = 'created'
    } else {
        $ports = $existing | Get-NetFirewallPortFilter
        $addresses = $existing | Get-NetFirewallAddressFilter
        $differs = ($existing.DisplayName -ne $rule.DisplayName) -or ([string]$existing.Direction -ne 'Inbound') `
            -or ([string]$existing.Action -ne 'Allow') -or ([string]$existing.Profile -ne 'Any') `
            -or ([string]$existing.Enabled -ne 'True') -or ([string]$ports.Protocol -ne 'TCP') `
            -or ((@($ports.LocalPort) -join ',') -ne $port) `
            -or ((@($addresses.RemoteAddress) -join ',') -ne $RemoteAddress)
        if ($differs) {
            Set-NetFirewallRule -Name $rule.Name -DisplayName $rule.DisplayName -Direction Inbound `
                -Protocol TCP -LocalPort $port -RemoteAddress $RemoteAddress -Action Allow -Profile Any `
                -Enabled True
            $action = 'updated'
        } else {
            $action = 'unchanged'
        }
    }
    [pscustomobject]@{ firewall_rule = $rule.Name; action = $action; port = $rule.Port; remote_address = $RemoteAddress } |
        ConvertTo-Json -Compress
}
