"""labkit: the thin helper package every notebook imports.

Only what two or more notebooks need lives here: parameter validation, device choice and
environment report, seeding, the offline data registry, timing, results files, plots, progress
bars and managed server processes. Topic code lives beside its notebook.
"""
from labkit.paths import repo_root, build_dir, data_root, stage_dir
from labkit.profile import Params, check_params, by_profile, PROFILES, DEVICES
from labkit.env import select_device, environment_report, seed_everything
from labkit.bench import time_it, Timing, Stopwatch
from labkit.results import record, load_reference, compare_table
from labkit.progress import progress
from labkit import data, plots, procs

__all__ = [
    "repo_root", "build_dir", "data_root", "stage_dir",
    "Params", "check_params", "by_profile", "PROFILES", "DEVICES",
    "select_device", "environment_report", "seed_everything",
    "time_it", "Timing", "Stopwatch",
    "record", "load_reference", "compare_table",
    "progress", "data", "plots", "procs",
]
