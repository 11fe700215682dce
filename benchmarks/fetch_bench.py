"""`artifacts fetch --from vm` of many small files, against OpenSSH's `sftp` on the same folder.

    .venv/bin/python benchmarks/fetch_bench.py [--files 1000] [--size 200] [--rounds 5]

Starts the tests' real sshd on loopback (tests/fixture_sshd.py; run as root for its test login),
puts a job folder of N files of `--size` bytes (in 10 subfolders) and its manifest in the VM's
artifact folder, then times, in interleaved rounds (medians): ours (`copy_verified` from a
`VmSource` on one pooled connection, as the CLI runs it: every file hashed against the manifest,
fsynced and renamed), the same with a download of its own per file (a channel and an SFTP
session each: how `VmSource` fetched until 2026-12-05), and OpenSSH's `sftp -r` of the folder (a
whole process, its connection included; no verification, no fsync). `--out /dev/shm` leaves
the local disk's fsyncs out.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fixture_sshd import SshServer  # noqa: E402


def vm_job(remote_dir: Path, files: int, size: int) -> str:
    from win_automation.artifacts.store import MANIFEST, ArtifactEntry, Manifest
    from win_automation.jobs.ids import new_job_id, new_trace_id

    job = new_job_id()
    folder = remote_dir / job
    entries = []
    for index in range(files):
        path = f"d{index % 10}/f{index:06d}.txt"
        data = os.urandom(size)
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        entries.append(ArtifactEntry(type="ssh", path=path, size_bytes=size, sha256=digest))
    manifest = Manifest(
        job_id=job, trace_id=new_trace_id(), created_at="2026-12-05T00:00:00Z", artifacts=entries
    )
    (folder / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return job


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="where the copies go (default: a new temporary folder)")
    args = parser.parse_args()

    from win_automation.adapters import sftp_download, ssh
    from win_automation.artifacts.copying import copy_verified
    from win_automation.operations.artifacts import VmSource, sftp_path

    server = SshServer()
    server.start()
    work = Path(tempfile.mkdtemp(prefix="wa-fetch-bench-", dir=args.out))
    try:
        known = server.write_known_hosts(work / "known_hosts")
        job = vm_job(server.remote_dir, args.files, args.size)
        conn = ssh.get_connection(server.config(known))
        conn.transport()
        sftp = [
            "sftp",
            "-q",
            "-r",
            "-P",
            str(server.port),
            "-i",
            str(server.client_key),
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "BatchMode=yes",
            f"{server.user}@127.0.0.1:{server.remote_dir / job}",
        ]

        def ours(out: Path) -> None:
            _, mismatches = copy_verified(VmSource(conn, str(server.remote_dir), job), out / job)
            assert not mismatches, mismatches[:3]

        class PerFile(VmSource):
            def copy(self, path, out, progress, limit):  # type: ignore[no-untyped-def]
                remote = sftp_path(str(server.remote_dir), job, path)
                copied = sftp_download.download(conn, remote, out, limit=limit)
                return copied.size, copied.sha256

        def per_file(out: Path) -> None:
            _, mismatches = copy_verified(PerFile(conn, str(server.remote_dir), job), out / job)
            assert not mismatches, mismatches[:3]

        def openssh(out: Path) -> None:
            out.mkdir()
            subprocess.run([*sftp, str(out)], check=True, stdout=subprocess.DEVNULL)

        rows = {
            "ours (verified, fsynced)": ours,
            "a session per file (before)": per_file,
            "openssh sftp -r": openssh,
        }
        times: dict[str, list[float]] = {name: [] for name in rows}
        for round_ in range(args.rounds):
            for name, fn in rows.items():
                out = work / f"out-{round_}-{len(times[name])}-{name.split()[0]}"
                started = time.perf_counter()
                fn(out)
                times[name].append(time.perf_counter() - started)
                shutil.rmtree(out)
        print(f"{args.files} files of {args.size} bytes, {args.rounds} rounds, medians:")
        base = statistics.median(times["openssh sftp -r"])
        for name, values in times.items():
            median = statistics.median(values)
            each = median * 1000 / args.files
            print(f"  {name}: {median:.2f} s ({each:.2f} ms a file, {median / base:.2f}x sftp)")
    finally:
        ssh.close_all()
        server.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
