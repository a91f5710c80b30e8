#!/usr/bin/env bash
# Makes sure the headless browser the `ckpt ui` browser tests drive is installed: Debian's
# chromium and chromium-driver (chromedriver), with apt-get when missing. The tests start their
# own chromedriver on a free port of 127.0.0.1 and stop it when they end.
set -euo pipefail

log() { echo "browser: $*" >&2; }

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  log "$(chromium --version 2>/dev/null | head -1); $(chromedriver --version | head -1)"
  exit 0
fi
log "installing chromium and chromium-driver with apt-get"
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >&2 \
  || { $sudo apt-get update -q >&2 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >&2; }
command -v chromium >/dev/null && command -v chromedriver >/dev/null \
  || { log "chromium or chromedriver is still missing after apt-get install"; exit 1; }
