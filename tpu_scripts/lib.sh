# shellcheck shell=bash
# Helpers shared by the scripts in this folder; sourced, never run.
# Set PROG (the script's name in messages) and DRY_RUN (true/false) before using them.
# Written for bash 3.2 as well (the bash of macOS), so no associative arrays or mapfile.

# A usage mistake: one line on stderr, exit status 2.
usage_error() {
  echo "$PROG: $* (see --help)" >&2
  exit 2
}

# Anything else that stops the script: one line on stderr, exit status 1.
die() {
  echo "$PROG: $*" >&2
  exit 1
}

# `FLAG VALUE` pairs: fails when the value is missing or is itself a flag.
need_value() {
  if [[ $# -lt 2 || -z "$2" || "$2" == --* ]]; then
    usage_error "$1 needs a value"
  fi
}

# One word as a shell would need it typed: bare when safe, else single-quoted
# (`--flag=value` as --flag='value').
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  elif [[ "$1" =~ ^(--[a-z][a-z0-9-]*=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Words quoted and joined by spaces, e.g. to build a command for a remote shell.
quote_all() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s' "$out"
}

# Run a command, or with DRY_RUN=true print it on one line, quoted so that it can be pasted.
run() {
  if [[ "$DRY_RUN" == true ]]; then
    quote_all "$@"
    echo
  else
    "$@"
  fi
}
