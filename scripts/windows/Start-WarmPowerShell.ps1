# Start-WarmPowerShell.ps1: the warm PowerShell session (ssh.warm_powershell). One long-lived
# `powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -Command -` per SSH
# connection gets this script as its first stdin line (-Command - runs each line as it arrives;
# -EncodedCommand would wait for the end of stdin) and then serves one request at a time:
#   stdin:   <nonce> <base64 of the UTF-8 script>                 (one line per request)
#   stdout:  <RS>wa-ready:<PID>                                   (once, when it can serve)
#            the script's output, then <RS>wa-end:<nonce>:<exit code>
#   stderr:  the script's errors, then <RS>wa-end:<nonce>
#   stdin:   <nonce> alone (a ping, sent before a request to a session that sat idle)
#   stdout:  <RS>wa-pong:<nonce>                                  (at once; nothing runs)
# (<RS> is the character 0x1E; each marker ends with a line feed.)
# The script is the same wrapped script the per-command path sends (preamble, body, trailer). It
# runs as a .ps1 file, so `exit N` ends the script, not the session, and sets $LASTEXITCODE, in a
# runspace of its own (opened ahead, after the previous reply): its variables, functions, aliases,
# modules, location and preferences die with it, in every scope, $global: included. A child scope
# (& { }) would not isolate $global:, Set-Location or imported modules. What a runspace does not
# hold, the process's environment variables and current directory, is put back after each
# script. The runspace shares this process's host, so its output, console writes and native
# programs reach stdout and stderr as in a process of its own; errors it leaves in its error
# stream are written as CLIXML, as powershell.exe writes them. The script and the programs it
# starts read an empty stdin ([Console]::In, and NUL as the standard input handle: end of input
# at once, as with a command of its own), never the request pipe.
param()

$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$utf8 = New-Object System.Text.UTF8Encoding($false)
[Console]::OutputEncoding = $utf8
$requests = [Console]::In
[Console]::SetIn([System.IO.TextReader]::Null)
$rs = [char]30

Add-Type -TypeDefinition @'
using System;
using System.Runtime.InteropServices;
namespace WinAutomation {
    public static class WarmSession {
        [StructLayout(LayoutKind.Sequential)]
        struct SecurityAttributes { public int Length; public IntPtr Descriptor; public int Inherit; }
        [DllImport("kernel32.dll", CharSet = CharSet.Unicode, SetLastError = true)]
        static extern IntPtr CreateFileW(string name, uint access, uint share, ref SecurityAttributes sa,
            uint disposition, uint flags, IntPtr template);
        [DllImport("kernel32.dll", SetLastError = true)]
        static extern bool SetStdHandle(int which, IntPtr handle);
        public static void DetachStdin() {
            SecurityAttributes sa = new SecurityAttributes();
            sa.Length = Marshal.SizeOf(sa);
            sa.Inherit = 1;
            IntPtr nul = CreateFileW("NUL", 0x80000000, 3, ref sa, 3, 0, IntPtr.Zero);
            if (nul != new IntPtr(-1)) { SetStdHandle(-10, nul); }
        }
    }
}
'@

function New-WarmRunspace {
    $state = [System.Management.Automation.Runspaces.InitialSessionState]::CreateDefault2()
    $state.ExecutionPolicy = 'Bypass'
    $runspace = [System.Management.Automation.Runspaces.RunspaceFactory]::CreateRunspace($Host, $state)
    $runspace.Open()
    $runspace
}

function ConvertTo-ClixmlError([string]$Text) {
    $escaped = [System.Security.SecurityElement]::Escape($Text.TrimEnd() + "`r`n")
    $escaped = $escaped.Replace("`r", '_x000D_').Replace("`n", '_x000A_')
    "#< CLIXML`r`n<Objs Version=`"1.1.0.1`" xmlns=`"http://schemas.microsoft.com/powershell/2004/04`">" +
        "<S S=`"Error`">$escaped</S></Objs>"
}

Get-ChildItem -LiteralPath $env:TEMP -Filter 'wa-session-*.ps1' -ErrorAction SilentlyContinue |
    Where-Object { $_.LastWriteTime -lt (Get-Date).AddDays(-1) } |
    Remove-Item -Force -ErrorAction SilentlyContinue
$baseEnv = [Environment]::GetEnvironmentVariables()
$baseDir = [Environment]::CurrentDirectory
$next = New-WarmRunspace
[WinAutomation.WarmSession]::DetachStdin()
[Console]::Out.Write("${rs}wa-ready:$PID`n")
[Console]::Out.Flush()

while ($null -ne ($line = $requests.ReadLine())) {
    if ($line.Trim() -eq '') { continue }  # the blank line that ends the bootstrap statement
    $nonce, $encoded = $line.Split(' ', 2)
    if ($null -eq $encoded) {
        [Console]::Out.Write("${rs}wa-pong:$nonce`n")
        [Console]::Out.Flush()
        continue
    }
    $code = 0
    $runspace = $next
    $shell = $null
    $file = Join-Path $env:TEMP "wa-session-$PID-$nonce.ps1"
    try {
        $text = $utf8.GetString([Convert]::FromBase64String($encoded))
        [IO.File]::WriteAllText($file, $text, (New-Object System.Text.UTF8Encoding($true)))
        $shell = [PowerShell]::Create()
        $shell.Runspace = $runspace
        $null = $shell.AddCommand($file).AddCommand('Out-Default')
        $null = $shell.Invoke()
        $last = $runspace.SessionStateProxy.GetVariable('LASTEXITCODE')
        if ($last -is [int]) { $code = $last } elseif ($shell.HadErrors) { $code = 1 }
        foreach ($record in $shell.Streams.Error) {
            [Console]::Error.Write((ConvertTo-ClixmlError ($record | Out-String)))
        }
    } catch {
        $failure = $_
        $inner = $_.Exception.InnerException
        if ($inner -is [System.Management.Automation.IContainsErrorRecord]) { $failure = $inner.ErrorRecord }
        [Console]::Error.Write((ConvertTo-ClixmlError ($failure | Out-String)))
        $code = 1
    }
    [Console]::OutputEncoding = $utf8
    [Console]::Out.Write("${rs}wa-end:${nonce}:$code`n")
    [Console]::Out.Flush()
    [Console]::Error.Write("${rs}wa-end:$nonce`n")
    [Console]::Error.Flush()
    try {
        if ($null -ne $shell) { $shell.Dispose() }
        $runspace.Dispose()
        Remove-Item -LiteralPath $file -Force -ErrorAction SilentlyContinue
        $now = [Environment]::GetEnvironmentVariables()
        foreach ($name in @($now.Keys)) {
            if (-not $baseEnv.Contains($name)) { [Environment]::SetEnvironmentVariable($name, $null) }
        }
        foreach ($name in @($baseEnv.Keys)) {
            if ($now[$name] -cne $baseEnv[$name]) { [Environment]::SetEnvironmentVariable($name, $baseEnv[$name]) }
        }
        [Environment]::CurrentDirectory = $baseDir
    } catch {
        $null = $_  # the next script still gets its own runspace; nothing may follow the markers
    }
    $next = New-WarmRunspace
}
