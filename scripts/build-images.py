#!/usr/bin/env python3
"""Builds Ferry's container images, the operator and the ferry-consumer sidecar, as OCI
archives: no container daemon, no base image pulled from a registry.

    python3 scripts/build-images.py                  # release build, then target/images/
    python3 scripts/build-images.py --binaries DIR   # package binaries built elsewhere

Each image is one layer holding what its binary needs and nothing else (no shell, no package
manager, as in distroless images):

  - /usr/local/bin/ferry-operator or /usr/local/bin/ferry-consumer, the entrypoint;
  - the C runtime the binary links (libc.so.6, libm.so.6, the dynamic loader, libgcc_s.so.1),
    from the build host's Debian packages libc6 and libgcc-s1, so the image runs the binary on
    the glibc it was linked against (both binaries' packed relocations need 2.36 or later;
    the build refuses an older libc6);
  - the CA certificates its TLS clients trust (rustls with the platform's roots), from
    Debian's ca-certificates, as the bundle /etc/ssl/certs/ca-certificates.crt;
  - /etc/passwd and /etc/group naming the user 65532 ("nonroot") the image runs as, which is
    the user the chart's operator pods and the sidecars Ferry injects are given;
  - /tmp (mode 1777) and /etc/nsswitch.conf (hosts from files, then DNS).

The archives are named for the chart's default repositories (ghcr.io/ferry-dev/operator and
ghcr.io/ferry-dev/consumer, tagged with the workspace version, which is the chart's
appVersion). Push or load them with any OCI tool, for example:

    skopeo copy oci-archive:target/images/consumer-0.1.0.oci.tar docker://registry.example.com/ferry/consumer:0.1.0

The build host must be Debian or Ubuntu (apt-get download and dpkg-deb fetch and unpack the
runtime packages; the CI machines are Debian 12). Layers are reproducible: files are sorted,
owned by root (the user's home by 65532) and dated SOURCE_DATE_EPOCH (default 0).
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = "ghcr.io/ferry-dev"
NONROOT = 65532
# Both binaries are linked with packed relative relocations (consumer/build.rs,
# operator/build.rs), which the dynamic loader understands from glibc 2.36 on.
MIN_GLIBC = (2, 36)
PACKAGES = ["libc6", "libgcc-s1", "ca-certificates"]
# Parts of the packages that nothing in a Ferry process reads: documentation, the iconv
# modules (Rust does no charset conversion through libc), the loader cache tools and the
# certificate scripts (the bundle is assembled here instead).
PRUNE = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/lib/*/gconv",
    "sbin",
    "usr/sbin",
    "usr/bin",
    "etc/ld.so.conf.d",
    "etc/ca-certificates",
    "etc/ca-certificates.conf",
    "usr/share/ca-certificates",
]


class Image:
    def __init__(self, name, binary, repository, ports):
        self.name = name
        self.binary = binary
        self.repository = repository
        self.ports = ports


IMAGES = [
    Image("operator", "ferry-operator", f"{REGISTRY}/operator", ["8080/tcp"]),
    Image("consumer", "ferry-consumer", f"{REGISTRY}/consumer", ["9090/tcp"]),
]


def die(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def run(args, **kwargs):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kwargs).stdout


def workspace_version():
    text = (ROOT / "Cargo.toml").read_text()
    section = text.split("[workspace.package]", 1)[1]
    return re.search(r'^version\s*=\s*"([^"]+)"', section, re.M).group(1)


def build_release():
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-p", "ferry-operator", "--bin",
         "ferry-operator", "-p", "ferry-consumer", "--bin", "ferry-consumer"],
        check=True, cwd=ROOT)
    return ROOT / "target" / "release"


def download_packages(into):
    """The runtime packages of the host's own Debian release, verified by apt."""
    def download():
        return subprocess.run(["apt-get", "download", *PACKAGES], cwd=into, text=True,
                              capture_output=True)
    result = download()
    if result.returncode != 0 and os.geteuid() == 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        result = download()
    if result.returncode != 0:
        die("apt-get download " + " ".join(PACKAGES) + " failed (this script needs a Debian "
            "or Ubuntu host with package lists: run apt-get update):\n" + result.stderr)
    debs = {}
    for deb in Path(into).glob("*.deb"):
        debs[run(["dpkg-deb", "-f", str(deb), "Package"]).strip()] = deb
    missing = [p for p in PACKAGES if p not in debs]
    if missing:
        die(f"apt-get download left no .deb for {missing}")
    return debs


def glibc_version(libc6_deb):
    version = run(["dpkg-deb", "-f", str(libc6_deb), "Version"]).strip()
    found = re.match(r"(?:\d+:)?(\d+)\.(\d+)", version)
    if not found:
        die(f"cannot read libc6's version {version!r}")
    return version, (int(found.group(1)), int(found.group(2)))


def glibc_needed(binary):
    """The highest GLIBC_x.y symbol version the binary asks the loader for. (Packed
    relocations ask for GLIBC_ABI_DT_RELR instead, which MIN_GLIBC covers.)"""
    names = re.findall(r"Name: (GLIBC_\d+(?:\.\d+)+)\b",
                       run(["readelf", "-V", "--wide", str(binary)]))
    return max((tuple(int(p) for p in n[len("GLIBC_"):].split(".")) for n in names),
               default=(0, 0))


def runtime_rootfs(debs, rootfs):
    for package in ["libc6", "libgcc-s1", "ca-certificates"]:
        subprocess.run(["dpkg-deb", "-x", str(debs[package]), str(rootfs)], check=True)
    certificates = sorted((rootfs / "usr/share/ca-certificates").rglob("*.crt"))
    if len(certificates) < 100:
        die(f"ca-certificates holds {len(certificates)} certificates, expected over a hundred")
    bundle = rootfs / "etc/ssl/certs/ca-certificates.crt"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_text("".join(c.read_text().rstrip("\n") + "\n" for c in certificates))
    for pattern in PRUNE:
        for target in rootfs.glob(pattern):
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
    # Directories the pruning emptied (usr/share, the multiarch usr/lib) go too.
    for directory in sorted(rootfs.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if directory.is_dir() and not directory.is_symlink() and not any(directory.iterdir()):
            directory.rmdir()
    (rootfs / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/sbin/nologin\n"
        f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n")
    (rootfs / "etc/group").write_text(f"root:x:0:\nnonroot:x:{NONROOT}:\n")
    (rootfs / "etc/nsswitch.conf").write_text("hosts: files dns\n")
    (rootfs / "tmp").mkdir(exist_ok=True)
    (rootfs / "home/nonroot").mkdir(parents=True, exist_ok=True)


def layer(rootfs, epoch):
    """A reproducible tar of `rootfs`: sorted entries, root-owned, one timestamp."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = sorted(p for p in rootfs.rglob("*"))
        for path in paths:
            relative = path.relative_to(rootfs).as_posix()
            info = tar.gettarinfo(str(path), arcname=relative)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = epoch
            if relative == "tmp":
                info.mode = 0o1777
            elif relative == "home/nonroot":
                info.uid = info.gid = NONROOT
                info.mode = 0o700
            elif info.isdir():
                info.mode = 0o755
            elif info.isfile():
                info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    tar_bytes = raw.getvalue()
    compressed = gzip.compress(tar_bytes, compresslevel=6, mtime=0)
    return tar_bytes, compressed


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type, data, annotations=None):
    d = {"mediaType": media_type, "digest": sha256(data), "size": len(data)}
    if annotations:
        d["annotations"] = annotations
    return d


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def oci_archive(image, tag, rootfs, epoch, labels, out):
    tar_bytes, compressed = layer(rootfs, epoch)
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    entrypoint = f"/usr/local/bin/{image.binary}"
    config = canonical({
        "architecture": oci_architecture(),
        "os": "linux",
        "created": created,
        "config": {
            "User": f"{NONROOT}:{NONROOT}",
            "Entrypoint": [entrypoint],
            "Env": ["PATH=/usr/local/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "WorkingDir": "/home/nonroot",
            "ExposedPorts": {port: {} for port in image.ports},
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar_bytes)]},
        "history": [{"created": created, "created_by": "scripts/build-images.py"}],
    })
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", compressed)],
        "annotations": labels,
    })
    reference = f"{image.repository}:{tag}"
    index = canonical({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [descriptor("application/vnd.oci.image.manifest.v1+json", manifest, {
            # The tag, for skopeo and umoci (oci-archive:FILE:TAG); the full name, for
            # containerd's import (kind load image-archive, ctr images import).
            "org.opencontainers.image.ref.name": tag,
            "io.containerd.image.name": reference,
        })],
    })
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as archive:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = epoch
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
        add("oci-layout", canonical({"imageLayoutVersion": "1.0.0"}))
        add("index.json", index)
        for blob in (config, manifest, compressed):
            add("blobs/sha256/" + hashlib.sha256(blob).hexdigest(), blob)
    return reference, len(compressed)


def oci_architecture():
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binaries", type=Path,
                        help="directory holding ferry-operator and ferry-consumer "
                             "(default: a release build of the workspace)")
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "images")
    parser.add_argument("--tag", default=None, help="default: the workspace version")
    args = parser.parse_args()

    tag = args.tag or workspace_version()
    binaries = args.binaries or build_release()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ferry-images-") as work:
        work = Path(work)
        debs = download_packages(work)
        libc_version, libc = glibc_version(debs["libc6"])
        if libc < MIN_GLIBC:
            die(f"libc6 {libc_version} is older than glibc "
                f"{MIN_GLIBC[0]}.{MIN_GLIBC[1]}, which the binaries' packed relocations need: "
                "build on Debian 12 or later")
        # What both images share, unpacked and pruned once.
        runtime = work / "runtime"
        runtime_rootfs(debs, runtime)
        # The commit, when building from a git checkout.
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True,
                                  capture_output=True).stdout.strip()
        for image in IMAGES:
            binary = binaries / image.binary
            if not binary.is_file():
                die(f"{binary} is missing")
            needed = glibc_needed(binary)
            if needed > libc:
                die(f"{image.binary} needs glibc {'.'.join(map(str, needed))}, "
                    f"libc6 is {libc_version}")
            rootfs = work / image.name
            shutil.copytree(runtime, rootfs, symlinks=True)
            target = rootfs / "usr/local/bin" / image.binary
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(binary, target)
            target.chmod(0o755)
            labels = {
                "org.opencontainers.image.title": image.binary,
                "org.opencontainers.image.version": tag,
                "org.opencontainers.image.licenses": "Apache-2.0",
                "org.opencontainers.image.source": "https://github.com/ferry-dev/ferry",
                "dev.ferry.libc6": libc_version,
            }
            if revision:
                labels["org.opencontainers.image.revision"] = revision
            out = args.out / f"{image.name}-{tag}.oci.tar"
            reference, size = oci_archive(image, tag, rootfs, epoch, labels, out)
            print(f"{out}: {reference}, layer {size / 2**20:.1f} MiB compressed, "
                  f"libc6 {libc_version}")


if __name__ == "__main__":
    main()
