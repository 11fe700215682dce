# `services.win-automation.hatchet`: hatchet-lite and its Postgres as OCI containers (podman or
# docker, through virtualisation.oci-containers), pinned like deploy/hatchet-lite/docker-compose.yml
# and the README: hatchet-lite v0.111.0 (hatchet-sdk 1.43 needs v0.78.23 or newer), postgres 15.6.
# Both use the host's network. Postgres listens on 127.0.0.1 only and gRPC on `grpcBindAddress`;
# the dashboard (8888) and health (8733) ports listen on every interface, so they are reachable
# from elsewhere only where networking.firewall opens them (NixOS opens none by default).
# The token for workers: `hatchet-admin token create` (README, "Run it as a service").
{
  config,
  lib,
  ...
}:
let
  inherit (lib) mkOption mkEnableOption mkIf types;
  top = config.services.win-automation;
  cfg = top.hatchet;
  portType = types.ints.between 1 65535;
in
{
  options.services.win-automation.hatchet = {
    enable = mkEnableOption "hatchet-lite and Postgres as OCI containers on this host";

    version = mkOption {
      type = types.strMatching "v[0-9]+\\.[0-9]+\\.[0-9]+";
      default = "v0.111.0";
      description = "hatchet-lite image tag (at least v0.78.23 for hatchet-sdk 1.43; README, Hatchet).";
    };

    postgresImage = mkOption {
      type = types.str;
      default = "postgres:15.6";
      description = "Postgres image holding Hatchet's store and queue.";
    };

    postgresPort = mkOption {
      type = portType;
      default = 5435;
      description = "Port Postgres listens on, on 127.0.0.1 only.";
    };

    grpcBindAddress = mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = "Address hatchet-lite's gRPC port (7077) listens on; 0.0.0.0 for workers on other hosts.";
    };

    grpcBroadcastAddress = mkOption {
      type = types.str;
      default = "localhost:7077";
      description = "The gRPC address tokens tell workers to dial: one that every worker's host can reach.";
    };

    environmentFile = mkOption {
      type = types.strMatching "/.+";
      example = "/run/secrets/hatchet.env";
      description = ''
        Absolute path (outside the Nix store) of a file with `POSTGRES_PASSWORD=...`,
        `DATABASE_URL=postgresql://hatchet:THE_PASSWORD@127.0.0.1:5435/hatchet?sslmode=disable`
        and `SERVER_AUTH_COOKIE_SECRETS=<two random strings, space separated>`. Read by both containers.
      '';
    };
  };

  config = mkIf (top.enable && cfg.enable) {
    virtualisation.oci-containers.containers = {
      hatchet-postgres = {
        image = cfg.postgresImage;
        cmd = [
          "postgres"
          "-c" "max_connections=200"
          "-c" "listen_addresses=127.0.0.1"
          "-p" (toString cfg.postgresPort)
        ];
        environment = {
          POSTGRES_USER = "hatchet";
          POSTGRES_DB = "hatchet";
        };
        environmentFiles = [ cfg.environmentFile ];
        volumes = [ "hatchet-postgres-data:/var/lib/postgresql/data" ];
        extraOptions = [ "--network=host" ];
      };
      hatchet-lite = {
        image = "ghcr.io/hatchet-dev/hatchet/hatchet-lite:${cfg.version}";
        dependsOn = [ "hatchet-postgres" ];
        environment = {
          SERVER_URL = "http://localhost:8888";
          SERVER_AUTH_COOKIE_DOMAIN = "localhost";
          SERVER_AUTH_COOKIE_INSECURE = "t";
          SERVER_AUTH_SET_EMAIL_VERIFIED = "t";
          SERVER_GRPC_BIND_ADDRESS = cfg.grpcBindAddress;
          SERVER_GRPC_PORT = "7077";
          SERVER_GRPC_INSECURE = "t";
          SERVER_GRPC_BROADCAST_ADDRESS = cfg.grpcBroadcastAddress;
          SERVER_INTERNAL_CLIENT_INTERNAL_GRPC_BROADCAST_ADDRESS = "localhost:7077";
          SERVER_DEFAULT_ENGINE_VERSION = "V1";
        };
        environmentFiles = [ cfg.environmentFile ];
        volumes = [ "hatchet-lite-config:/config" ];
        extraOptions = [ "--network=host" ];
      };
    };
  };
}
