#!/usr/bin/env bash
# The browser tests drive the system's Chromium (Playwright's own browser download does not
# work offline). Install Debian's package when it is missing and we are allowed to.
set -u
if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Chromium for the browser tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  exit $?
fi
echo "ERROR: the browser tests need Chromium: install the 'chromium' package (or set PORTAL_CHROMIUM to its path)" >&2
exit 1
