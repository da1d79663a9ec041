# Source on a GPU image that has CUDA torch/JAX but no Jupyter or Keras (see ci/gpu_image_wheels.py):
#   source ci/gpu_image_env.sh [wheel-folder]      (default .whl)
# Installs the carried wheels into a folder under the machine's temp dir (kept while the machine is
# warm, so a later command finds them), and sets what the runner and notebooks read.
_whl="${1:-.whl}"
_tmp="$(python3 -c 'import tempfile; print(tempfile.gettempdir())')"
export LABKIT_GPU_SITE="$_tmp/labkit-site"
if ls "$_whl"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$LABKIT_GPU_SITE" "$_whl"/*.whl \
    || { echo "gpu_image_env: installing the wheels in $_whl failed" >&2; return 1; }
elif [ ! -d "$LABKIT_GPU_SITE/papermill" ]; then
  echo "gpu_image_env: no wheels in $_whl and none installed in $LABKIT_GPU_SITE (run ci/gpu_image_wheels.py, carry .whl)" >&2
  return 1
fi
export PYTHONPATH="$LABKIT_GPU_SITE:$PWD/shared${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$LABKIT_GPU_SITE/bin:$PATH"
export KERAS_BACKEND="${KERAS_BACKEND:-jax}"          # the image has CUDA JAX, no TensorFlow
unset MPLBACKEND   # a non-inline backend (Agg) hides every plot from the executed notebook; the kernel picks inline
# Data folders carried in ./data are merged into the temp data root, so a later command on the same warm
# machine needs not carry them again (what travels per command is limited).
if [ -z "${LABKIT_DATA_ROOT:-}" ]; then
  export LABKIT_DATA_ROOT="$_tmp/labkit-data"
  mkdir -p "$LABKIT_DATA_ROOT"
  [ -d data ] && cp -a data/. "$LABKIT_DATA_ROOT"/
fi
export LABKIT_STAGE_DIR="${LABKIT_STAGE_DIR:-$_tmp/labkit-stages}"   # resumable pieces survive between commands
mkdir -p "$LABKIT_STAGE_DIR"
[ -d build/stages ] && cp -an build/stages/. "$LABKIT_STAGE_DIR"/ 2>/dev/null   # pieces carried back in from an earlier machine
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0 PYTHONUNBUFFERED=1
python3 -c "import papermill, ipykernel, keras; print('gpu_image_env: papermill', papermill.__version__, '| keras', keras.__version__, keras.backend.backend())"
