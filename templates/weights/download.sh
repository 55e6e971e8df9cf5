{% autoescape off %}#!/bin/sh
# LLaMA {{ variant.size }} download script for {{ user.email }}, made {{ now|date:"Y-m-d H:i" }} UTC.
#
#   PORTAL_TOKEN=llp_... sh download-{{ variant.slug }}.sh [TARGET_DIR]
#
# PORTAL_TOKEN is a personal access token with the 'download' scope ({{ base }}/access/tokens/).
# The links below are yours alone: each works only with your token, checks your access
# every time, and expires after {{ link_hours }} hours; the script then fetches fresh ones.
# Re-running resumes: finished files are checked and kept, partial files continue.
# Needs curl, and sha256sum (Linux) or shasum (macOS).
set -u

PORTAL_URL='{{ base }}'
MODEL='{{ variant.slug }}'
TARGET_DIR="${1:-./llama-{{ variant.slug }}}"
MAX_TRIES="${PORTAL_MAX_TRIES:-6}"
# How long to keep retrying while the portal or the file store is unreachable (seconds).
RETRY_SECONDS="${PORTAL_RETRY_SECONDS:-600}"
# Extra curl options for the file transfers, e.g. "--limit-rate 20M" or "--proxy ...".
CURL_OPTS="${PORTAL_CURL_OPTS:-}"

say() { printf '%s\n' "$*" >&2; }

if [ -z "${PORTAL_TOKEN:-}" ]; then
  say "error: set PORTAL_TOKEN to a personal access token with the 'download' scope (create one at $PORTAL_URL/access/tokens/)."
  exit 2
fi
command -v curl >/dev/null 2>&1 || { say "error: curl is not installed."; exit 2; }
if command -v sha256sum >/dev/null 2>&1; then
  sha256_of() { sha256sum "$1" | cut -d ' ' -f 1; }
elif command -v shasum >/dev/null 2>&1; then
  sha256_of() { shasum -a 256 "$1" | cut -d ' ' -f 1; }
else
  say "error: neither sha256sum nor shasum is installed: cannot verify the files."; exit 2
fi

mkdir -p "$TARGET_DIR" || { say "error: cannot create $TARGET_DIR."; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/llama-dl.XXXXXX") || { say "error: cannot create a temporary folder."; exit 2; }
trap 'rm -rf "$WORK"' EXIT
trap 'rm -rf "$WORK"; say "interrupted: run the script again to resume."; exit 130' INT TERM

# <sha256> <size> <path> <link>
cat > "$WORK/links" <<'LINKS'
{% for link in links %}{{ link.file.sha256 }} {{ link.file.size }} {{ link.file.path }} {{ link.url }}
{% endfor %}LINKS
cut -d ' ' -f 1-3 "$WORK/links" > "$WORK/files"
cat > "$WORK/checklist.chk" <<'CHECKLIST'
{% for link in links %}{{ link.file.md5 }}  {{ link.file.path }}
{% endfor %}CHECKLIST

json_field() {  # json_field FILE NAME: a string field of the portal's {"error": {...}} body
  sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p" "$1" | head -n 1
}

size_of() { if [ -f "$1" ]; then wc -c < "$1" | tr -d ' '; else echo 0; fi; }

refresh_links() {
  status=$(curl -sS -o "$WORK/fresh" -w '%{http_code}' --retry 3 \
    -H "Authorization: Bearer $PORTAL_TOKEN" "$PORTAL_URL/api/v1/models/$MODEL/links?format=txt") || {
    say "error: cannot reach $PORTAL_URL to fetch fresh links."; return 1; }
  if [ "$status" != 200 ]; then
    say "error: fresh links refused (HTTP $status): $(sed 's/^error [a-z_]*: //' "$WORK/fresh")"
    return 1
  fi
  mv "$WORK/fresh" "$WORK/links"
  say "fetched fresh links"
}

# Wait before the next try, doubling up to a minute; fail (without sleeping) once the next
# try would start after the retry budget of this file.
backoff() {
  now=$(date +%s)
  if [ $((now + delay)) -gt "$deadline" ]; then
    say "error: $path: giving up after retrying for ${RETRY_SECONDS}s (set PORTAL_RETRY_SECONDS to wait longer); run the script again to resume."
    return 1
  fi
  say "warning: $path: $1; retrying in ${delay}s."
  sleep "$delay"
  delay=$((delay * 2)); [ "$delay" -gt 60 ] && delay=60
  return 0
}

failed=0
while read -r sha size path <&3; do
  dest="$TARGET_DIR/$path"
  part="$dest.part"
  if [ -f "$dest" ] && [ "$(size_of "$dest")" = "$size" ] && [ "$(sha256_of "$dest")" = "$sha" ]; then
    say "ok: $path (already here, SHA-256 verified)"
    continue
  fi
  mkdir -p "$(dirname "$dest")"
  try=1
  delay=1
  ok=0
  deadline=$(( $(date +%s) + RETRY_SECONDS ))
  while [ "$try" -le "$MAX_TRIES" ]; do
    link=$(awk -v p="$path" '$3 == p { print $4 }' "$WORK/links")
    if [ -z "$link" ]; then say "error: $path: no link for it in the portal's answer."; break; fi
    # Ask the portal for a fresh signed S3 URL (it checks access each time).
    reply=$(curl -sS -o "$WORK/body" -w '%{http_code} %{redirect_url}' \
      -H "Authorization: Bearer $PORTAL_TOKEN" -H 'Accept: application/json' "$link") || reply="000 "
    status=${reply%% *}
    location=${reply#* }
    case "$status" in
      302|303|307)
        have=$(size_of "$part")
        if [ "$have" -gt "$size" ]; then rm -f "$part"; have=0; fi
        if [ "$have" -lt "$size" ]; then
          [ "$have" -gt 0 ] && say "resuming $path at byte $have"
          say "downloading $path ($size bytes)"
          # shellcheck disable=SC2086 # CURL_OPTS is a list of options on purpose
          before=$have
          if ! curl -fS --progress-bar $CURL_OPTS -C - -o "$part" "$location"; then
            # Progress renews the budget: a long download over a flaky line keeps going.
            if [ "$(size_of "$part")" -gt "$before" ]; then
              delay=1; deadline=$(( $(date +%s) + RETRY_SECONDS ))
            fi
            backoff "transfer interrupted" || break
            continue
          fi
        fi
        if [ "$(sha256_of "$part")" = "$sha" ]; then
          mv "$part" "$dest"
          say "ok: $path (SHA-256 verified)"
          ok=1
          break
        fi
        say "warning: $path: SHA-256 does not match; downloading it again (try $try of $MAX_TRIES)."
        rm -f "$part"
        try=$((try + 1))
        ;;
      401|403|404)
        code=$(json_field "$WORK/body" code)
        message=$(json_field "$WORK/body" message)
        case "$code" in
          link_expired|link_used_up|link_revoked|unknown_link)
            say "note: the link for $path is no longer valid ($code)."
            refresh_links || break
            try=$((try + 1))
            ;;
          *)
            say "error: $path: ${message:-refused with HTTP $status}"
            break
            ;;
        esac
        ;;
      000|429|5*)
        message=$(json_field "$WORK/body" message 2>/dev/null)
        backoff "the portal did not answer properly (HTTP $status${message:+: $message})" || break
        ;;
      *)
        say "error: $path: unexpected answer HTTP $status from the portal."
        break
        ;;
    esac
  done
  [ "$ok" = 1 ] || { failed=$((failed + 1)); say "FAILED: $path"; }
done 3< "$WORK/files"

cp "$WORK/checklist.chk" "$TARGET_DIR/checklist.chk"
if [ "$failed" -gt 0 ]; then
  say "$failed file(s) failed. Run the script again to resume; finished files are kept."
  exit 1
fi
say "All files of LLaMA {{ variant.size }} are in $TARGET_DIR and verified."
{% endautoescape %}
