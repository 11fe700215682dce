# win-automation for Nix: the package, a development shell, and the NixOS module
# `services.win-automation` (nix/module.nix). README, "Run it as a service", shows its use:
#
#   inputs.win-automation.url = "git+file:///path/to/your/clone-of-win-automation";
#   nixosConfigurations.host = nixpkgs.lib.nixosSystem {
#     modules = [ win-automation.nixosModules.default { services.win-automation.enable = true; } ];
#   };
{
  description = "Drive a Windows VM from Linux: PowerShell over SSH, Aloha GUI tasks, Playwright, durable workflows";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        win-automation = pkgs.callPackage ./nix/package.nix { };
        default = win-automation;
      });

      # What scripts/install.sh installs on Debian: sshd, Chromium, QEMU and Nix for the tests.
      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            python3
            openssh
            chromium
            nodejs
            qemu
            nix
          ];
          shellHook = ''
            [ -x .venv/bin/python ] || python3 -m venv .venv
            .venv/bin/pip install -q -e '.[test,bench]' --config-settings editable_mode=compat
            export PATH="$PWD/.venv/bin:$PATH"
          '';
        };
      });

      overlays.default = final: prev: { win-automation = final.callPackage ./nix/package.nix { }; };

      nixosModules = {
        win-automation = import ./nix/module.nix;
        default = self.nixosModules.win-automation;
      };
    };
}
