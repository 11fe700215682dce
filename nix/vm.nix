# `services.win-automation.vm`: the Windows VM as a systemd service running QEMU, with user-mode
# networking whose forwards are bound to 127.0.0.1 (QEMU binds every interface when a forward
# names no host address), and a QMP socket for `win-automation vm ...` and GUI jobs' screenshots.
# QEMU runs as the services' user, so the screendumps it writes land in their artifact folders.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption mkEnableOption mkIf types;
  top = config.services.win-automation;
  cfg = top.vm;
  stateDir = "/var/lib/win-automation";
  forwards = lib.concatMapStringsSep "," (f: "hostfwd=tcp:127.0.0.1:${toString f.host}-:${toString f.guest}") (
    lib.attrValues cfg.forwards
  );
  forward = host: guest: { inherit host guest; };
  portType = types.ints.between 1 65535;
  qemuArgs =
    [
      "${cfg.qemuPackage}/bin/qemu-system-x86_64"
      "-name" "win-automation-vm"
      "-machine" "q35,accel=${if cfg.kvm then "kvm" else "tcg"}"
      "-cpu" (if cfg.kvm then "host" else "max")
      "-smp" (toString cfg.cpus)
      "-m" (toString cfg.memoryMiB)
      "-drive" "file=${cfg.disk},if=none,id=disk0,format=qcow2,discard=unmap"
      "-device" "ahci,id=ahci0"
      "-device" "ide-hd,drive=disk0,bus=ahci0.0"
      "-nic" "user,model=${cfg.nicModel},${forwards}"
      "-vga" "std"
      "-usb" "-device" "usb-tablet"
      "-display" "none"
      "-qmp" "unix:${cfg.qmpSocket},server=on,wait=off"
      "-rtc" "base=localtime"
    ]
    ++ lib.optionals cfg.uefi [
      "-drive" "if=pflash,format=raw,readonly=on,file=${pkgs.OVMF.fd}/FV/OVMF_CODE.fd"
      "-drive" "if=pflash,format=raw,file=${cfg.uefiVars}"
    ]
    ++ lib.optionals (cfg.installIso != null) [
      "-drive" "file=${cfg.installIso},media=cdrom,readonly=on"
    ]
    ++ lib.optionals (cfg.vnc != null) [ "-vnc" cfg.vnc ]
    ++ cfg.extraArgs;
  # A clean shutdown: ask Windows to power down over QMP, then wait (TimeoutStopSec kills it after).
  powerdown = pkgs.writeShellScript "win-automation-vm-stop" ''
    printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"system_powerdown"}' |
      ${pkgs.socat}/bin/socat -t 2 - UNIX-CONNECT:${cfg.qmpSocket} >/dev/null || exit 0
    while kill -0 "$MAINPID" 2>/dev/null; do sleep 1; done
  '';
in
{
  options.services.win-automation.vm = {
    enable = mkEnableOption "the Windows VM as a QEMU service (win-automation-vm.service)";

    qemuPackage = mkOption {
      type = types.package;
      default = pkgs.qemu_kvm;
      defaultText = lib.literalExpression "pkgs.qemu_kvm";
      description = "QEMU to run (needs qemu-system-x86_64).";
    };

    disk = mkOption {
      type = types.strMatching "/.+\\.qcow2";
      default = "/var/lib/win-automation-vm/windows.qcow2";
      description = ''
        The VM's disk: a qcow2 image (snapshots need qcow2), writable by `services.win-automation.user`.
        Create it once: `qemu-img create -f qcow2 /var/lib/win-automation-vm/windows.qcow2 80G`.
      '';
    };

    installIso = mkOption {
      type = types.nullOr (types.strMatching "/.+");
      default = null;
      example = "/var/lib/win-automation-vm/Win11_English_x64.iso";
      description = "A Windows installation ISO attached as a CD-ROM (for the first install; unset afterwards).";
    };

    memoryMiB = mkOption {
      type = types.ints.between 512 1048576;
      default = 8192;
      description = "Guest memory in MiB (Windows 11 wants at least 4096).";
    };

    cpus = mkOption {
      type = types.ints.between 1 256;
      default = 4;
      description = "Virtual CPUs.";
    };

    kvm = mkOption {
      type = types.bool;
      default = true;
      description = "Use KVM (/dev/kvm; the service user joins group kvm). Without it QEMU emulates (TCG), far slower.";
    };

    uefi = mkOption {
      type = types.bool;
      default = true;
      description = "Boot with OVMF (UEFI), as Windows 11 needs; false boots SeaBIOS.";
    };

    uefiVars = mkOption {
      type = types.strMatching "/.+";
      default = "/var/lib/win-automation-vm/OVMF_VARS.fd";
      description = "The VM's writable UEFI variable store; copied from OVMF's template on first start.";
    };

    nicModel = mkOption {
      type = types.str;
      default = "e1000e";
      description = "Network card model; e1000e needs no driver in Windows (virtio-net-pci is faster with virtio drivers).";
    };

    forwards = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            host = mkOption {
              type = portType;
              description = "Port on the host's 127.0.0.1.";
            };
            guest = mkOption {
              type = portType;
              description = "Port in the guest.";
            };
          };
        }
      );
      default = {
        ssh = forward 22555 22;
        aloha-server = forward 7887 7887;
        aloha-client = forward 7888 7888;
        playwright = forward 9323 9323;
      };
      description = ''
        User-mode networking forwards, each `hostfwd=tcp:127.0.0.1:HOST-:GUEST`: reachable from
        this host only. The defaults match win-automation's defaults (ssh.port 22555, Aloha 7887
        and 7888, Playwright 9323). Guest services must listen on the guest's network interface,
        and the guest firewall must let them in (Install-WinAutomation.ps1 does both rules).
      '';
    };

    qmpSocket = mkOption {
      type = types.strMatching "/.+";
      default = "/run/win-automation-vm/qmp.sock";
      description = ''
        QEMU's QMP socket. The module sets `settings.vm.qmp_socket` to it, so `vm status`,
        `vm screenshot`, `vm snapshot ...` and GUI jobs' screenshots work for the services and for
        members of the services' group.
      '';
    };

    vnc = mkOption {
      type = types.nullOr types.str;
      default = "127.0.0.1:0";
      description = "VNC display for a person to watch or install Windows (`-vnc`; 127.0.0.1:0 is port 5900 on loopback); null for none.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "-device" "virtio-balloon-pci" ];
      description = "More QEMU arguments (a TPM for Windows 11 through swtpm, say).";
    };
  };

  config = mkIf (top.enable && cfg.enable) {
    services.win-automation.settings.vm.qmp_socket = lib.mkDefault cfg.qmpSocket;

    systemd.services.win-automation-vm = {
      description = "win-automation Windows VM (QEMU)";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      preStart = lib.optionalString cfg.uefi ''
        if [ ! -e ${lib.escapeShellArg cfg.uefiVars} ]; then
          install -m 0660 ${pkgs.OVMF.fd}/FV/OVMF_VARS.fd ${lib.escapeShellArg cfg.uefiVars}
        fi
      '';
      unitConfig.ConditionPathExists = cfg.disk;
      serviceConfig = {
        User = top.user;
        Group = top.group;
        SupplementaryGroups = lib.optional cfg.kvm "kvm";
        ExecStart = lib.escapeShellArgs qemuArgs;
        ExecStop = "${powerdown}";
        TimeoutStopSec = 180;
        Restart = "on-failure";
        RestartSec = 10;
        RuntimeDirectory = "win-automation-vm";
        RuntimeDirectoryMode = "0750";
        StateDirectory = "win-automation-vm";
        StateDirectoryMode = "0750";
        UMask = "0007";
        NoNewPrivileges = true;
        PrivateTmp = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        # The disk and UEFI variables, and the artifact folders QEMU writes screendumps into.
        ReadWritePaths = [
          "/var/lib/win-automation-vm"
          stateDir
          (dirOf cfg.disk)
        ];
        DeviceAllow = lib.optional cfg.kvm "/dev/kvm rw";
        DevicePolicy = "closed";
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        CapabilityBoundingSet = "";
      };
    };
  };
}
