#!/usr/bin/env bash
# The imgaug backend's test environment (imgaug 0.4.0 imports only with numpy<2), made beside
# the main one: a virtual environment that sees the main environment's packages (a .pth file
# naming its site-packages, read after the new environment's own) and installs only what
# differs: imgaug, numpy<2 and imgaug's own dependencies, not TensorFlow a second time.
# Run with the main environment's python first on PATH:   bash tests/imgaug_env.sh [DIR]
set -euo pipefail
dir=${1:-.venv-imgaug}
main_site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python -m venv "$dir"
site=$("$dir/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$main_site" > "$site/main_environment.pth"
"$dir/bin/python" -m pip install -q ".[imgaug]" pytest
