"""ci/full_runs.py: publishing an executed full run as results/full.ipynb, and the checker's verdicts."""
from __future__ import annotations

import base64
import io
import json

import nbformat
import pytest
from full_run_fixture import make_topic, png_b64, results_file, synthetic_executed

import full_runs

RUN = "run-2026-11-30-a"


@pytest.fixture()
def topic(tmp_path):
    return make_topic(tmp_path / "notebooks")


def executed(tmp_path, nb, name="executed.ipynb"):
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def image(b64: str):
    from PIL import Image
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def publish(tmp_path, topic, nb, results=True, **kw):
    res = results_file(tmp_path / "build" / "98_synthetic.full.json", RUN) if results else None
    return full_runs.publish(executed(tmp_path, nb), topic.name, res, notebooks=topic.parent, **kw)


def test_publish_sanitizes_keeps_the_injected_cell_and_ties_both_files_to_one_run(tmp_path, topic):
    target = publish(tmp_path, topic, synthetic_executed(RUN))
    text = target.read_text()
    for secret in ("/home/runner", "/home/alice", "/root/", "/tmp/tmpa1b2c3", "0123456789abcdef0123456789abcdef",
                   "hf_AbCdEf"):
        assert secret not in text, f"{secret!r} survived publishing"
    nb = nbformat.read(target, as_version=4)
    out = nb.cells[3].outputs[0].text
    assert "results written to <repo>/build/results/98_synthetic.full.json" in out
    assert "checkpoint in <tmp>/model.bin, cache ~/.cache/x, home ~/data" in out
    assert "lab?token=<redacted>" in out and "HF_TOKEN=<hf-token>" in out
    assert "GPT-J 4.79 ms/token: 64 tokens" in out  # ordinary text is left alone
    assert nb.metadata.papermill.input_path == "<repo>/notebooks/98_synthetic/98_synthetic.ipynb"
    assert [c.metadata.get("tags") for c in nb.cells[1:3]] == [["parameters"], ["injected-parameters"]]
    assert nb.metadata.labkit.run_id == json.loads((topic / "results" / "full.json").read_text())["run_id"] == RUN
    assert full_runs.full_run_problems(topic) == []
    assert not list((topic / "results").glob(".*tmp*")), "a temporary file was left behind"


def test_figures_stay_lossless_when_the_notebook_is_small(tmp_path, topic):
    fig = png_b64(320, 240)
    nb = nbformat.read(publish(tmp_path, topic, synthetic_executed(RUN, figures=[fig])), as_version=4)
    new = nb.cells[4].outputs[0].data["image/png"]
    assert list(image(new).convert("RGB").get_flattened_data()) == list(image(fig).convert("RGB").get_flattened_data())


def test_figures_are_recompressed_until_the_file_fits(tmp_path, topic):
    figs = [png_b64(600, 400, noisy=True, seed=s) for s in range(2)]
    before = len(nbformat.writes(synthetic_executed(RUN, figures=figs)))
    assert before > 1_500_000
    # Quantizing alone leaves ~2 x 350 kB of base64: only scaling down fits 400 kB.
    target = publish(tmp_path, topic, synthetic_executed(RUN, figures=figs), max_bytes=400_000)
    assert target.stat().st_size < 400_000
    nb = nbformat.read(target, as_version=4)
    for cell in nb.cells[4:6]:
        out = cell.outputs[0]
        img = image(out.data["image/png"])
        assert img.format == "PNG" and img.size[0] < 600
        assert out.metadata["image/png"] == {"width": 600, "height": 400}  # shown at its old size
    assert full_runs.full_run_problems(topic, max_bytes=400_000) == []


def test_publish_gives_up_with_a_clear_error_when_text_alone_is_too_big(tmp_path, topic):
    nb = synthetic_executed(RUN)
    nb.cells[3].outputs[0].text += "x" * 300_000
    with pytest.raises(full_runs.PublishError, match="too much non-image output"):
        publish(tmp_path, topic, nb, max_bytes=200_000)
    assert not (topic / "results" / "full.ipynb").exists()


@pytest.mark.parametrize("change, message", [
    (lambda nb: nb.metadata.labkit.update(profile="smoke"), "metadata.labkit.profile is 'smoke'"),
    (lambda nb: nb.metadata.papermill.parameters.update(profile="smoke"), "papermill ran it with profile='smoke'"),
    (lambda nb: nb.metadata.labkit.pop("run_id"), "no metadata.labkit.run_id"),
    (lambda nb: nb.metadata.labkit.pop("machine"), "metadata.labkit lacks machine"),
    (lambda nb: nb.metadata.labkit.update(run_id="other"), "has run_id 'run-2026-11-30-a', the notebook 'other'"),
    (lambda nb: nb.cells.append(synthetic_executed(RUN, error=True).cells[-1]), "ZeroDivisionError"),
])
def test_publish_refuses_what_is_not_a_clean_full_run(tmp_path, topic, change, message):
    nb = synthetic_executed(RUN)
    change(nb)
    with pytest.raises(full_runs.PublishError, match=message):
        publish(tmp_path, topic, nb)
    assert not (topic / "results" / "full.ipynb").exists()


def test_publish_without_results_needs_the_committed_full_json_of_the_same_run(tmp_path, topic):
    results_file(topic / "results" / "full.json", "an-older-run")
    with pytest.raises(full_runs.PublishError, match="results/full.json is not from run 'run-2026-11-30-a'"):
        publish(tmp_path, topic, synthetic_executed(RUN), results=False)
    results_file(topic / "results" / "full.json", RUN)
    publish(tmp_path, topic, synthetic_executed(RUN), results=False)
    assert full_runs.full_run_problems(topic) == []


def test_publish_names_a_wrong_folder_and_a_missing_file(tmp_path, topic, capsys):
    with pytest.raises(full_runs.PublishError, match="'97_nothing' is not a topic folder"):
        full_runs.publish(executed(tmp_path, synthetic_executed(RUN)), "97_nothing", notebooks=topic.parent)
    assert full_runs.main(["publish", str(tmp_path / "absent.ipynb"), "00_environment_check"]) == 1
    assert "absent.ipynb does not exist" in capsys.readouterr().err


def test_the_checker_sees_each_kind_of_bad_reference_run(tmp_path, topic):
    assert full_runs.full_run_problems(topic) == []  # no full.ipynb: nothing to check
    publish(tmp_path, topic, synthetic_executed(RUN))
    nb_path = topic / "results" / "full.ipynb"
    results_file(topic / "results" / "full.json", "another-run")
    assert any("'another-run' is not the notebook's 'run-2026-11-30-a'" in p for p in full_runs.full_run_problems(topic))
    results_file(topic / "results" / "full.json", RUN)
    assert any("limit 0.0 MB" in p for p in full_runs.full_run_problems(topic, max_bytes=1000))
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells.append(synthetic_executed(RUN, error=True).cells[-1])
    nb.cells[3].outputs[0].text += "saved to /home/bob/secret.txt\n"
    nb.metadata.labkit.profile = "smoke"
    nbformat.write(nb, nb_path)
    problems = "\n".join(full_runs.full_run_problems(topic))
    assert "error output (ZeroDivisionError" in problems and "profile is 'smoke'" in problems
    assert "shows a path or secret ('/home/bob')" in problems
    (topic / "results" / "full.json").unlink()
    assert any("no readable results/full.json" in p for p in full_runs.full_run_problems(topic))
    nb_path.write_text("{ not a notebook")
    assert any("cannot be read as a notebook" in p for p in full_runs.full_run_problems(topic))


def test_check_notebooks_runs_the_reference_run_check(tmp_path, topic, monkeypatch):
    import check_notebooks
    publish(tmp_path, topic, synthetic_executed(RUN))
    results_file(topic / "results" / "full.json", "another-run")
    problems = check_notebooks.check(topic / "98_synthetic.ipynb", {"98_synthetic": {}})
    assert any("come from different runs" in p for p in problems)


def test_a_notebook_stamped_by_the_runner_publishes(tmp_path, topic):
    # The real hand-over: ci/run_notebooks.py writes metadata.labkit into the executed notebook
    # (stamp_notebook) with the machine of the run's results file; publish takes it from there.
    import run_notebooks
    from full_run_fixture import MACHINE

    nb = synthetic_executed(RUN)
    del nb.metadata["labkit"]
    path = executed(tmp_path, nb)
    run_notebooks.stamp_notebook(path, RUN, "full", {"machine": MACHINE})
    res = results_file(tmp_path / "build" / "98_synthetic.full.json", RUN)
    full_runs.publish(path, topic.name, res, notebooks=topic.parent)
    assert full_runs.full_run_problems(topic) == []


def test_publish_refuses_a_run_that_lost_the_smoke_runs_figures(tmp_path, topic):
    """The H200 runs of 2026-11-30 ran with MPLBACKEND=Agg and came back with no plots at all."""
    smoke = nbformat.read(topic / f"{topic.name}.ipynb", as_version=4)
    smoke.cells += synthetic_executed(RUN).cells[-1:]          # the smoke notebook shows one figure
    nbformat.write(smoke, topic / f"{topic.name}.ipynb")
    with pytest.raises(full_runs.PublishError, match="no figures, where the committed smoke run shows 1"):
        publish(tmp_path, topic, synthetic_executed(RUN, figures=[]))
    publish(tmp_path, topic, synthetic_executed(RUN, figures=[]), allow_no_figures=True)
    publish(tmp_path, topic, synthetic_executed(RUN))


def test_run_id_names_the_commit_and_marks_a_tree_that_differs_from_it(tmp_path, monkeypatch):
    """A GPU machine received a working tree whose .git was older than its files: its run id named a commit
    that had not produced the run. Tracked changes now add "+dirty" (untracked files do not) and the tree of the
    files as they are, which names the commit they were copied from."""
    import subprocess

    import run_notebooks
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,
                                    check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("commit", "-qm", "one")
    sha = git("rev-parse", "--short", "HEAD")
    monkeypatch.setattr(run_notebooks, "ROOT", tmp_path)
    (tmp_path / "new.txt").write_text("untracked")
    assert run_notebooks.new_run_id("04_neural_fields", "full").endswith(f"-04-full-{sha}")
    (tmp_path / "a.txt").write_text("2")
    dirty = run_notebooks.new_run_id("04_neural_fields", "full")
    assert f"-04-full-{sha}+dirty+tree" in dirty
    assert git("diff", "--cached", "--name-only") == ""   # computed in a scratch index: nothing was staged
    # the tree named is that of the files as they are: committing them gives a commit with that tree
    git("add", "-A")
    git("commit", "-qm", "two")
    assert dirty.endswith("+tree" + git("rev-parse", "HEAD^{tree}")[:10])
