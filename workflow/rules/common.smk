import json
import os
import re
import sys
import time
from pathlib import Path

from invgrad.data import cache as decoded_cache
from invgrad.data.catalog import NOT_RUN, image_folder_path
from invgrad.replication import plan, registry

# Caches stay inside the project (matplotlib, torch hub, papermill/jupyter).
os.environ.setdefault("MPLCONFIGDIR", str(Path(".cache/matplotlib").resolve()))
os.environ.setdefault("TORCH_HOME", str(Path(".cache/torch").resolve()))
os.environ.setdefault("JUPYTER_CONFIG_DIR", str(Path(".cache/jupyter").resolve()))


# One clear message for a bad config, before anything is written: the schema (workflow/schemas/config.schema.yaml
# plus every registered experiment's block, invgrad.replication.registry) first, then what only the library knows.
# Parsing imports no torch and reads no checkpoint: a checkpoint is verified by the job that loads it.
try:
    plan.load_experiment_modules(config)
    registry.validate_config(
        config, Path(workflow.basedir) / "schemas/config.schema.yaml"
    )
    CELLS = plan.validate(config)
except (
    Exception
) as error:  # jsonschema's ValidationError, a PlanError, a module that does not import
    sys.exit(f"error: {getattr(error, 'message', None) or error}")

ENV = "../envs/invgrad.yaml"
VICTIM_PLAN = "results/victim_plan.json"
COMPUTE = plan.compute_specs(config)
VICTIMS = plan.victims(config, CELLS)
TARGETS = plan.targets(config, CELLS)
CONFIG_LABEL = ", ".join(str(f) for f in workflow.configfiles) or "config/config.yaml"
GPU = 1 if str(config["device"]).startswith("cuda") else 0
NOTEBOOK_EXPERIMENTS = list(CELLS) + list(COMPUTE)
# make_table.py and make_report.py register the same extra experiment modules as this parse
MODULES = " ".join(f"--module {m}" for m in config.get("experiment_modules", []))


def constant(value):
    """A param that is ``value`` as written (a plain string param would have its braces read as wildcards)."""
    return lambda wildcards: value


def one_of(names):
    """A wildcard constraint matching exactly these names (none: matches nothing)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


_missing = [c for c in VICTIMS if not Path(c).is_file()]
if (
    _missing
    and "DVC_STAGE" not in os.environ  # inside `dvc repro`, training them is the point
    and Path("dvc.lock").is_file()
    and "results/victims" in Path("dvc.lock").read_text()
):
    print(
        f"note: {len(_missing)} victim checkpoint(s) missing, e.g. {_missing[0]}; DVC tracks results/victims: "
        "`dvc pull` fetches the trained victims instead of training them again (docs/DVC.md)",
        file=sys.stderr,
    )


onstart:
    # Values that would only fail inside a job (the device, the report's thresholds, each cell's defense and FedAvg
    # schedule; invgrad.config.run_value_problems): one line each, before any job. It imports torch, hence here and
    # not at parse. The device must exist on this machine only when the jobs run here (local execution).
    from invgrad.config import run_value_problems

    _problems = run_value_problems(config, CELLS, present=workflow.local_exec)
    if _problems:
        sys.exit("error: " + "\nerror: ".join(_problems))
    for _split in decoded_cache.unavailable_splits(plan.CACHE_DIR):
        print(
            f"note: {_split} had no training data last time; resolving its source again",
            file=sys.stderr,
        )
    # Where each needed training split will come from (data.resolve_training_source, without network): printed
    # when a run starts, not at parse (it imports the data package, hence torch).
    for _dataset in ("CIFAR10", "CIFAR100"):
        if any(v["dataset"] == _dataset for v in VICTIMS.values()):
            _available, _why = plan.training_data_status(config, _dataset)
            print(
                (
                    f"note: trained {_dataset} victims: {_why}"
                    if _available
                    else f"note: trained {_dataset} cells will be marked '{_why}'"
                ),
                file=sys.stderr,
            )


def spec_json(wildcards):
    return json.dumps(CELLS[wildcards.experiment][wildcards.cell], sort_keys=True)


def victim_of(wildcards):
    path = CELLS[wildcards.experiment][wildcards.cell]["victim"]
    return [path] if path else []


RECORDS_STAMP = ".records_missing"


def records_stamp(wildcards):
    """A finished cell (images.pt) whose per-image record was deleted is attacked again: the stamp is touched
    (newer than images.pt, so Snakemake reruns the job, which writes every record) and stays an input once
    written, so the set of inputs never changes back and forces a second rerun. Nothing is deleted here.
    """
    out = Path("results", wildcards.experiment, wildcards.cell)
    stamp = out / RECORDS_STAMP
    names = CELLS[wildcards.experiment][wildcards.cell]["selection"]["names"]
    if (out / "images.pt").is_file():
        missing = [f"{n}.json" for n in names if not (out / f"{n}.json").is_file()]
        if missing and (
            not stamp.exists()
            or stamp.stat().st_mtime <= (out / "images.pt").stat().st_mtime
        ):
            stamp.touch()
            print(
                f"{out}: record(s) {', '.join(missing)} missing: the cell is attacked again",
                file=sys.stderr,
            )
    return [str(stamp)] if stamp.exists() else []


def extraction_flag(dataset):
    """The extraction flag when the training folder comes from data.archives.<dataset>.

    Once written, the flag stays an input even though the folder now exists: the set of inputs of a trained
    victim must not change between runs, or Snakemake would retrain it. A folder the user unpacked by hand (no
    flag) needs no extraction.
    """
    folder = image_folder_path(config["data"]["train"].get(dataset))
    archive = config["data"]["archives"].get(dataset)
    if folder is None or not archive or not Path(archive).is_file():
        return []
    flag = f"{config['data']['root']}/.{dataset}.extracted"
    if Path(flag).exists():
        return [flag]
    decoded = [plan.split_cache(dataset, split) for split in ("train", "test")]
    if all((decoded_cache.read_status(p) or {}).get("status") == "ok" for p in decoded):
        return []  # decoded splits pulled by DVC: nothing to unpack
    return [] if folder.is_dir() else [flag]


def val_extraction(wildcards):
    """A cell whose validation source reads the training folder unpacked from the archive (e.g.
    ``first-per-class:data/raw/cifar10-jpeg``) waits for that extraction (the flag, as the victims do).
    """
    spec = CELLS[wildcards.experiment][wildcards.cell]
    if not plan.reads_training_folder(config, spec["dataset"], spec["val_source"]):
        return []
    return [ancient(flag) for flag in extraction_flag(spec["dataset"])]


def cell_images(experiment):
    return [
        f"results/{experiment}/{cell}/images.pt" for cell in CELLS.get(experiment, {})
    ]


# A split decoded as 'not run' is resolved again on the next run without deleting anything (rules/training.smk).
RETRY_TOKEN = f"not run last time; resolved again by the run of {time.time_ns()}"


def retry_param(wildcards):
    split = Path(plan.split_cache(wildcards.dataset, wildcards.split))
    status = (decoded_cache.read_status(split) or {}).get("status")
    # a dry run plans no retry
    retry = split.is_file() and status == NOT_RUN and not workflow.dryrun
    return RETRY_TOKEN if retry else "resolve once"
