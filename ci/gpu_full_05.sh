# Topic 05's full profile on a GPU machine (about 14 minutes on one H200, plus about 8 for the 1- vs 2-GPU piece on
# a two-GPU machine). From the repository root, on a machine that carries .whl (ci/gpu_image_wheels.py), .whl_05
# (monai, nibabel, pydicom, fire, termcolor, pytorch-ignite: see notebooks/05_monai/mo_full.py) and data/mni152,
# data/dicom_samples, data/nibabel_samples; start it detached so it outlives one device call:
#     source ci/gpu_image_env.sh .whl && python3 -m pip install -q --no-index --no-deps --no-compile \
#         --target "$LABKIT_GPU_SITE" .whl_05/*.whl
#     python3 ci/gpu_job.py start full05 -- bash ci/gpu_full_05.sh ; python3 ci/gpu_job.py wait full05 540
# The pieces land in the stage folder (labkit.stage_dir); a piece already there is loaded, not computed again,
# so the job resumes after a lost machine (carry the stage folder back); the 1- vs 2-GPU piece also keeps each of
# its four runs as it ends (mo_ddp._launch_once), under build/stages/05_monai.full/.ddp_compare.partial.
# With one GPU the 1- vs 2-GPU piece is left out (mo_full.py says so).
set -u
export PYTHONUNBUFFERED=1
R=$PWD
cd "$R/notebooks/05_monai" || exit 1
n_gpu=$(python3 -c 'import torch; print(torch.cuda.device_count())')
if [ "$n_gpu" -ge 2 ]; then python3 mo_full.py --ddp --budget-s 600; echo "[full05] ddp rc=$?"; fi
CUDA_VISIBLE_DEVICES=0 python3 mo_full.py --budget-s 1100; echo "[full05] one-GPU pieces rc=$?"
cd "$R" && python3 ci/run_notebooks.py --nb 05 --profile full --device cuda
echo "[full05] notebook rc=$?"
