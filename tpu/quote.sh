# Quoting for the command strings the tpu/*.sh scripts hand to remote shells (gcloud ... ssh --command, ssh,
# bash -c): every value goes through printf %q, so a space, quote, ';' or '$' in a setting reaches the remote
# command as one literal word and is never run by the remote shell.
# shellcheck shell=bash

# quoted WORD...  ->  the words, each quoted for the shell, separated by spaces
quoted() {
  local out
  printf -v out '%q ' "$@"
  printf '%s' "${out% }"
}

# extra_args  ->  EXTRA_ARGS split at whitespace (no quote removal, no expansion), each word quoted; a value with
# spaces belongs in the CONFIG file. A literal ~ in a path reaches esjax, which expands it on the host.
extra_args() {
  local words=()
  read -r -a words <<< "${EXTRA_ARGS:-}"
  if (( ${#words[@]} )); then
    quoted "${words[@]}"
  fi
}
