#!/usr/bin/env bash
# WordNet 3.0 for the TAS pipeline's negative phrases (workers/engine/methods/tas/lexicon.py).
# Debian's wordnet-base holds the database; the engine lays it out for nltk under var/nltk_data
# (or $RIS_NLTK_DATA) with the lexnames file nltk needs. Idempotent; no network beyond Debian's mirror.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ ! -f /usr/share/wordnet/data.noun ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Debian's wordnet-base for the TAS pipeline"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base >/dev/null
  else
    echo "WordNet is not in /usr/share/wordnet; install Debian's 'wordnet-base' package (TAS needs it)" >&2
    exit 1
  fi
fi
"$PY" -m workers.engine.methods.tas.lexicon ensure
