"""ci/gpu_full_01.sh and ci/gpu_full_05.sh, with a stand-in `python3` that logs each command and writes the files
the real tools write: the steps run in order, a step whose stage file exists is skipped (a job started again
after a lost machine resumes), and 05's 1- vs 2-GPU piece runs only when two GPUs are there."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAKE = r"""#!/bin/bash
echo "$*" >> "$FAKE_LOG"
case "$*" in
  *"device_count"*) echo "$FAKE_NGPU"; exit 0 ;;
esac
args=("$@"); out=""; stage=0
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = "--out" ] && out="${args[$((i + 1))]}"
  [ "${args[$i]}" = "--stage" ] && stage=1
  [ "${args[$i]}" = "--merge" ] && out="batch_bench.json"
done
if [ -n "$out" ]; then
  [ $stage = 1 ] && out="$LABKIT_STAGE_DIR/01_triton_gptj_t5.full/$out"
  echo '{}' > "$out"
fi
exit 0
"""


def run(script, tmp_path, n_gpu=1):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python3").write_text(FAKE)
    (bin_dir / "python3").chmod(0o755)
    log = tmp_path / "log"
    log.write_text("")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(log), FAKE_NGPU=str(n_gpu),
               LABKIT_STAGE_DIR=str(tmp_path / "stages"))
    res = subprocess.run(["bash", str(ROOT / "ci" / script)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return log.read_text().splitlines(), res.stdout     # one line per command: the tool, then its arguments


def test_gpu_full_01_runs_the_steps_in_order_and_resumes(tmp_path):
    lines, _ = run("gpu_full_01.sh", tmp_path)
    assert [t.split()[0] for t in lines] == ["ft_batch_bench.py", "ft_batch_bench.py", "ft_batch_bench.py", "ft_served_gpu.py",
                     "ci/run_notebooks.py"]
    stage = tmp_path / "stages" / "01_triton_gptj_t5.full"
    assert sorted(p.name for p in stage.iterdir()) == ["b1.json", "batch_bench.json", "bt.json", "served_gpu.json"]
    (stage / "served_gpu.json").unlink()            # lost with the machine: only it and the notebook run again
    lines, out = run("gpu_full_01.sh", tmp_path)
    assert [t.split()[0] for t in lines] == ["ft_served_gpu.py", "ci/run_notebooks.py"] and out.count("done before") == 1
    (tmp_path / "fresh").mkdir()
    assert "--t5-archs t5-small,t5-base" in next(t for t in run("gpu_full_01.sh", tmp_path / "fresh")[0] if "bt.json" in t)


def test_gpu_full_01_redoes_only_the_named_parts_over_a_carried_batch_bench(tmp_path, monkeypatch):
    stage = tmp_path / "stages" / "01_triton_gptj_t5.full"
    stage.mkdir(parents=True)
    (stage / "batch_bench.json").write_text('{"gptj_b1": {}}')      # carried in: GPT-J parts measured before
    (stage / "served_gpu.json").write_text("{}")
    monkeypatch.setenv("REDO", "gptj_batch,t5")
    lines, _ = run("gpu_full_01.sh", tmp_path)
    assert [t.split()[0] for t in lines] == ["ft_batch_bench.py", "ft_batch_bench.py", "ci/run_notebooks.py"]
    assert "--parts gptj_batch,t5 --t5-archs t5-small,t5-base" in lines[0] and "--merge batch_bench.json redo.json" in lines[1]
    assert (stage / "batch_bench.json").read_text() == (stage / "redo_merged.json").read_text()   # the merged file
    lines, _ = run("gpu_full_01.sh", tmp_path)                      # again: nothing re-measured
    assert [t.split()[0] for t in lines] == ["ci/run_notebooks.py"]


def test_gpu_full_05_runs_the_two_gpu_piece_only_with_two_gpus(tmp_path):
    lines, _ = run("gpu_full_05.sh", tmp_path, n_gpu=1)
    assert [t.split()[0] for t in lines] == ["-c", "mo_full.py", "ci/run_notebooks.py"]
    lines, _ = run("gpu_full_05.sh", tmp_path, n_gpu=2)
    assert [t.split()[0] for t in lines] == ["-c", "mo_full.py", "mo_full.py", "ci/run_notebooks.py"]
    assert "--ddp" in lines[1] and "--ddp" not in lines[2] and "--profile full --device cuda" in lines[3]
