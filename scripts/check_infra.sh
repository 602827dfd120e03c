#!/usr/bin/env bash
# Static checks of infra/: terraform fmt, terraform validate (root module and every
# example), and a checkov security scan, offline. checkov is pinned and lives in its own
# tool virtualenv (.venv-tools/): it pins old boto3/botocore that must not enter the
# project's venv. Installs what it needs on first use; later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION="3.3.30"
TOOLS_VENV=".venv-tools"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
PROJECT_PYTHON="${PROJECT_PYTHON:-.venv/bin/python}"
[ -x "$PROJECT_PYTHON" ] || PROJECT_PYTHON="$PYTHON"

stamp="$TOOLS_VENV/.checkov-$CHECKOV_VERSION"
if [ ! -f "$stamp" ]; then
  echo "installing checkov $CHECKOV_VERSION into $TOOLS_VENV"
  rm -rf "$TOOLS_VENV"
  "$PYTHON" -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install -q --upgrade pip
  "$TOOLS_VENV/bin/pip" install -q "checkov==$CHECKOV_VERSION"
  touch "$stamp"
fi

# Providers come from the local filesystem mirror (found, or TF_PROVIDER_MIRROR).
TF_CLI_CONFIG_FILE="$("$PROJECT_PYTHON" -c 'from mlaas4hep.local.terraform import write_cli_config; print(write_cli_config())')"
export TF_CLI_CONFIG_FILE TF_IN_AUTOMATION=1 TF_INPUT=0 CHECKPOINT_DISABLE=1
export TF_PLUGIN_CACHE_DIR="${TF_PLUGIN_CACHE_DIR:-$HOME/.cache/terraform-plugins}"
mkdir -p "$TF_PLUGIN_CACHE_DIR"

echo "== terraform fmt"
terraform fmt -check -recursive -diff infra

echo "== terraform validate"
for dir in infra infra/examples/*/; do
  dir="${dir%/}"
  data_dir="$PWD/build/terraform-validate/$(echo "$dir" | tr '/' '_')"
  TF_DATA_DIR="$data_dir" terraform -chdir="$dir" init -backend=false -input=false -no-color >/dev/null
  echo "-- $dir"
  TF_DATA_DIR="$data_dir" terraform -chdir="$dir" validate -no-color
done

echo "== checkov $CHECKOV_VERSION"
"$TOOLS_VENV/bin/checkov" --directory infra --framework terraform --skip-download \
  --config-file infra/.checkov.yaml --quiet --compact
