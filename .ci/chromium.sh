#!/usr/bin/env bash
# Install Debian's Chromium and its ChromeDriver when missing: the console's browser tests
# (tests/console/test_browser.py) drive them headless through Selenium; with CI set, a missing
# browser fails the run instead of skipping. Nothing is started here.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
