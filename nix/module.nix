# NixOS module `services.win-automation`: the worker and the supervisor as systemd services, the
# config file from Nix options, secrets from an environment file (never in the Nix store), one
# fixed user and group (a person in the group runs the CLI on the same journal), state in
# /var/lib/win-automation, and systemd hardening. Optional parts: hatchet-lite with Postgres as
# OCI containers (nix/hatchet.nix) and the QEMU Windows VM with its QMP socket (nix/vm.nix).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption mkEnableOption mkIf types;
  cfg = config.services.win-automation;
  json = pkgs.formats.json { };
  stateDir = "/var/lib/win-automation";
  configFile = json.generate "win-automation.json" cfg.settings;
  exe = lib.getExe cfg.package;

  # What every win-automation process gets: its user, the config, the secrets, the hardening.
  serviceBase = {
    User = cfg.user;
    Group = cfg.group;
    StateDirectory = "win-automation";
    StateDirectoryMode = "0770";
    WorkingDirectory = stateDir;
    UMask = "0007";
    EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
    NoNewPrivileges = true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    ReadWritePaths = [ stateDir ];
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
    ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" ];
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
  };
  serviceEnv = {
    WIN_AUTOMATION_CONFIG = "${configFile}";
    HOME = stateDir;
  };
  after = [ "network-online.target" ] ++ lib.optional cfg.vm.enable "win-automation-vm.service"
    ++ lib.optional cfg.hatchet.enable "podman-hatchet-lite.service";
  secretKeys = [
    [ "ssh" "password" ]
    [ "ssh" "key_passphrase" ]
    [ "playwright" "ws_path" ]
    [ "hatchet" "token" ]
  ];
in
{
  imports = [
    ./vm.nix
    ./hatchet.nix
  ];

  options.services.win-automation = {
    enable = mkEnableOption "win-automation's worker and supervisor (Windows VM automation)";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The win-automation package (flake output `packages.<system>.win-automation`).";
    };

    user = mkOption {
      type = types.str;
      default = "win-automation";
      description = "User the services (and the QEMU VM) run as; created when it is the default.";
    };

    group = mkOption {
      type = types.str;
      default = "win-automation";
      description = ''
        Group that owns ${stateDir} (the journal, artifacts, known_hosts). Add people who run the
        CLI on this host to it: they then share the services' journal and configuration.
      '';
    };

    settings = mkOption {
      type = types.submodule { freeformType = json.type; };
      default = { };
      example = lib.literalExpression ''
        {
          ssh = { host = "127.0.0.1"; port = 22555; user = "administrator"; key_file = "/var/lib/win-automation/id_ed25519"; };
          supervisor.interval = "1m";
        }
      '';
      description = ''
        The config file (`--config`), as the README's settings table gives it: sections and keys
        of config.example.json. The module sets `data.dir`, `artifacts.out_dir` and
        `ssh.known_hosts` under ${stateDir}, and `vm.qmp_socket` when `vm.enable` is set; values
        given here win. Secrets (ssh.password, ssh.key_passphrase, playwright.ws_path,
        hatchet.token) do not belong here, since this file is in the world-readable Nix store:
        put them in `environmentFile`. The program refuses unknown keys with the key's name.
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr (types.strMatching "/.+");
      default = null;
      example = "/run/secrets/win-automation.env";
      description = ''
        Absolute path of a file of `NAME=value` lines read by every service at start, outside the
        Nix store (a string, not a Nix path, so it is never copied there): HATCHET_CLIENT_TOKEN,
        WIN_AUTOMATION_SSH_PASSWORD, WIN_AUTOMATION_SSH_KEY_PASSPHRASE,
        WIN_AUTOMATION_PLAYWRIGHT_WS_PATH. Readable by root only is enough.
      '';
    };

    worker = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run `win-automation worker` (needs a Hatchet engine and HATCHET_CLIENT_TOKEN in environmentFile).";
      };
      name = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Worker name (`--name`); default win-automation-HOSTNAME.";
      };
      slots = mkOption {
        type = types.ints.between 1 1000;
        default = 10;
        description = "Steps the worker runs at once (`--slots`).";
      };
      labels = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = { vm = "win11"; };
        description = "Worker labels (`--label key=value`), which route workflows that require them.";
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "More arguments to `win-automation worker`.";
      };
    };

    supervisor = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run the supervisor (ordered health checks, remediation, circuit breaker).";
      };
      mode = mkOption {
        type = types.enum [
          "loop"
          "timer"
        ];
        default = "loop";
        description = ''
          `loop`: one long-running `win-automation supervisor run` (rounds every
          `settings.supervisor.interval`). `timer`: `win-automation supervisor run --once`
          started by a systemd timer every `supervisor.timerInterval`.
        '';
      };
      timerInterval = mkOption {
        type = types.str;
        default = "1min";
        description = "With mode `timer`: systemd time span between rounds (OnUnitActiveSec).";
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "More arguments to `win-automation supervisor run`.";
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = map (path: {
      assertion = !(lib.hasAttrByPath path cfg.settings);
      message = "services.win-automation.settings.${lib.concatStringsSep "." path} is a secret: put it in services.win-automation.environmentFile, not in the Nix store";
    }) secretKeys;

    services.win-automation.settings = {
      data.dir = lib.mkDefault stateDir;
      artifacts.out_dir = lib.mkDefault "${stateDir}/artifacts";
      ssh.known_hosts = lib.mkDefault "${stateDir}/known_hosts";
    };

    users.users = mkIf (cfg.user == "win-automation") {
      win-automation = {
        isSystemUser = true;
        group = cfg.group;
        home = stateDir;
        extraGroups = lib.optional cfg.vm.enable "kvm";
        description = "win-automation services";
      };
    };
    users.groups = mkIf (cfg.group == "win-automation") { win-automation = { }; };

    # A person's CLI on this host uses the services' config (and so their journal).
    environment.systemPackages = [ cfg.package ];
    environment.variables.WIN_AUTOMATION_CONFIG = "${configFile}";

    systemd.services.win-automation-worker = mkIf cfg.worker.enable {
      description = "win-automation worker (Hatchet)";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      inherit after;
      environment = serviceEnv;
      serviceConfig = serviceBase // {
        ExecStart = lib.escapeShellArgs (
          [ exe "worker" "--slots" (toString cfg.worker.slots) ]
          ++ lib.optionals (cfg.worker.name != null) [ "--name" cfg.worker.name ]
          ++ lib.concatLists (lib.mapAttrsToList (k: v: [ "--label" "${k}=${v}" ]) cfg.worker.labels)
          ++ cfg.worker.extraArgs
        );
        # SIGTERM drains: running steps finish within --grace (30 s by default), then exit 0.
        TimeoutStopSec = 60;
        Restart = "on-failure";
        RestartSec = 5;
      };
    };

    systemd.services.win-automation-supervisor = mkIf cfg.supervisor.enable {
      description = "win-automation supervisor";
      wants = [ "network-online.target" ];
      inherit after;
      wantedBy = lib.optional (cfg.supervisor.mode == "loop") "multi-user.target";
      environment = serviceEnv;
      serviceConfig = serviceBase // (
        if cfg.supervisor.mode == "loop" then
          {
            ExecStart = lib.escapeShellArgs ([ exe "supervisor" "run" ] ++ cfg.supervisor.extraArgs);
            Restart = "on-failure";
            RestartSec = 5;
          }
        else
          {
            Type = "oneshot";
            ExecStart = lib.escapeShellArgs ([ exe "supervisor" "run" "--once" ] ++ cfg.supervisor.extraArgs);
          }
      );
    };

    systemd.timers.win-automation-supervisor = mkIf (cfg.supervisor.enable && cfg.supervisor.mode == "timer") {
      description = "win-automation supervisor rounds";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnBootSec = "1min";
        OnUnitActiveSec = cfg.supervisor.timerInterval;
      };
    };
  };
}
