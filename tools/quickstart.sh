#!/usr/bin/env bash
# Quick start: install dependencies, build, write the embedded tiny model (random weights,
# DeepSeek-V3's architecture and tokenizer), start `tandem serve` and send it one chat
# completion with curl. Run from a terminal, the server then stays in the foreground (Ctrl-C
# stops it); run non-interactively (stdin not a terminal: scripts, CI), it is stopped and the
# script exits.
#   TANDEM_TOKENIZER_DIR  DeepSeek-V3 tokenizer files (default: ../shared/data/deepseek-v3)
#   TANDEM_PORT           port to serve on (default 30000)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
if ! command -v curl > /dev/null; then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get install -y -q --no-install-recommends curl
fi
bash tools/build.sh

tandem=build/release/app/tandem
model=build/models/tiny
port=${TANDEM_PORT:-30000}
tokenizer=${TANDEM_TOKENIZER_DIR:-../shared/data/deepseek-v3}
serve_flags=()
if [[ -f $tokenizer/tokenizer.json ]]; then
  [[ -f $model/config.json ]] || $tandem make-model --preset tiny --tokenizer "$tokenizer" --out "$model"
  [[ -f $model/tokenizer.json ]] || cp "$tokenizer"/tokenizer.json "$tokenizer"/tokenizer_config.json "$model"/
else
  echo "quickstart: no tokenizer.json in $tokenizer (set TANDEM_TOKENIZER_DIR); serving token ids only" >&2
  [[ -f $model/config.json ]] || $tandem make-model --preset tiny --out "$model"
  serve_flags+=(--skip-tokenizer-init)
fi

$tandem serve --model-path "$model" --served-model-name tiny --port "$port" "${serve_flags[@]}" &
server=$!
trap 'kill "$server" 2> /dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
  kill -0 "$server" 2> /dev/null || { echo "quickstart: tandem serve exited" >&2; exit 1; }
  sleep 0.2
done

if ((${#serve_flags[@]})); then
  request=(/generate '{"input_ids": [0, 3923, 344, 245, 1665, 3066], "sampling_params": {"max_new_tokens": 16}}')
else
  request=(/v1/chat/completions '{"model": "tiny", "messages": [{"role": "user", "content": "Hello! Who are you?"}], "max_tokens": 16}')
fi
command="curl -s http://127.0.0.1:$port${request[0]} -H 'Content-Type: application/json' -d '${request[1]}'"
echo "\$ $command"
eval "$command"
echo
echo "(random weights: the reply is gibberish in DeepSeek-V3's vocabulary)"

if [[ -t 0 ]]; then
  echo "tandem serve is running on http://127.0.0.1:$port (docs/server.md); Ctrl-C stops it"
  trap 'kill -TERM "$server" 2> /dev/null || true' INT TERM
  wait "$server" || true
  wait "$server" 2> /dev/null || true
else
  kill -TERM "$server"
  wait "$server"
fi
trap - EXIT
