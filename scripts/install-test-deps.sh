#!/usr/bin/env bash
# Installs what Ferry's tests need and is not part of the machine image:
#   - .venv/ with moto[server] (the SQS-compatible server the SQS tests run against) and
#     helm-python-sdk (Helm's own engine, which the chart tests lint, render and install with)
#   - Prometheus (Debian's package), which the monitoring tests scrape and query
#   - skopeo and umoci (Debian's packages), with which the image tests read, verify and
#     unpack the OCI archives scripts/build-images.py writes
#   - a JDK (Debian's default-jdk-headless) if javac is missing, to compile the tests' repair
#     of the Pub/Sub emulator
# and checks what the image must already have: cargo, the Google Cloud CLI's Pub/Sub
# emulator (with Java), kubectl. Idempotent; safe to run before every test run.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo is not installed (this project needs a Rust toolchain)"
command -v python3 >/dev/null || die "python3 is not installed (moto runs on it)"

if [ ! -x .venv/bin/moto_server ]; then
  say "creating .venv with moto[server]"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
fi
.venv/bin/moto_server --help >/dev/null 2>&1 || die ".venv/bin/moto_server does not run; delete .venv and run this script again"

if ! .venv/bin/python -c 'import helm_python' >/dev/null 2>&1; then
  say "installing helm-python-sdk (Helm's engine) into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check 'helm-python-sdk>=0.2.2,<0.3'
fi
.venv/bin/python -c 'import helm_python as h; h.helm_sdk_version()' >/dev/null \
  || die "helm-python-sdk in .venv cannot load Helm's library; delete .venv and run this script again"

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  [ "$(id -u)" = 0 ] || die "Prometheus is missing: sudo apt-get install prometheus (Debian's package), or run this script as root"
  say "installing Prometheus (Debian's package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
prometheus --version >/dev/null 2>&1 || die "prometheus is installed but does not run"

if ! command -v skopeo >/dev/null || ! command -v umoci >/dev/null; then
  [ "$(id -u)" = 0 ] || die "skopeo and umoci are missing: sudo apt-get install skopeo umoci (Debian's packages), or run this script as root"
  say "installing skopeo and umoci (Debian's packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends skopeo umoci >/dev/null
fi

if [ -z "${FERRY_PUBSUB_EMULATOR:-}" ]; then
  command -v gcloud >/dev/null || die "the Google Cloud CLI (gcloud) with its Pub/Sub emulator is needed; or set FERRY_PUBSUB_EMULATOR to a cloud-pubsub-emulator launcher"
  sdk_root=$(gcloud info --format='value(installation.sdk_root)')
  [ -x "$sdk_root/platform/pubsub-emulator/bin/cloud-pubsub-emulator" ] \
    || die "the Pub/Sub emulator is missing under $sdk_root: gcloud components install pubsub-emulator"
fi
command -v java >/dev/null || die "Java is needed by the Pub/Sub emulator"
# The tests compile a repair for the emulator's jar (tests/pubsub-emulator, docs/sandbox.md).
if ! command -v javac >/dev/null; then
  [ "$(id -u)" = 0 ] || die "javac is missing: sudo apt-get install default-jdk-headless (Debian's package), or run this script as root"
  say "installing a JDK (Debian's default-jdk-headless)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends default-jdk-headless >/dev/null
fi
say "test dependencies ready"
