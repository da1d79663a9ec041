# Topic 01's Triton on a GPU image without it; source after ci/gpu_image_env.sh:
#   source ci/gpu_triton_env.sh [wheel-folder ...]      (default: .whl_01a .whl_01b)
# The folders come from `python3 ci/gpu_image_wheels.py --only triton01` (nvidia-pytriton: tritonserver and the
# python-backend stubs; tritonclient[grpc,http] and its dependencies; numpy 1.26.4). Installs what the image
# lacks into a folder under the machine's temp dir, makes the python backend's venv there (the image's python3
# with numpy 1.26.4 before the image's own packages: the bundled backend breaks with numpy 2) and exports
# TRITON_PYTHON_BIN (read by ft_triton_repo.server_env) and PYTHONPATH. Idempotent: a later command on the
# same warm machine may carry none of the folders.
_t01_dirs=("$@"); [ "${#_t01_dirs[@]}" -gt 0 ] || _t01_dirs=(.whl_01a .whl_01b)
_t01_tmp="$(python3 -c 'import tempfile; print(tempfile.gettempdir())')" || return 1
_t01_exports="$(python3 "$(dirname "${BASH_SOURCE[0]}")/gpu_image_wheels.py" --install-triton "${_t01_dirs[@]}" \
  --site "$_t01_tmp/labkit-site01" --venv "$_t01_tmp/labkit-triton-venv")" || { unset _t01_tmp _t01_exports _t01_dirs; return 1; }
eval "$_t01_exports"
unset _t01_tmp _t01_exports _t01_dirs
