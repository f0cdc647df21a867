import json
import os
import sys
from pathlib import Path

from snakemake.utils import validate

from invgrad.data import cache as decoded_cache
from invgrad.replication import experiments
from invgrad.victim import training

# Caches stay inside the project (matplotlib, torch hub, papermill/jupyter).
os.environ.setdefault("MPLCONFIGDIR", str(Path(".cache/matplotlib").resolve()))
os.environ.setdefault("TORCH_HOME", str(Path(".cache/torch").resolve()))
os.environ.setdefault("JUPYTER_CONFIG_DIR", str(Path(".cache/jupyter").resolve()))


# One clear message for a bad config, before anything is written: schema first, then what only the library knows.
validate(config, schema="../schemas/config.schema.yaml")
try:
    CELLS = experiments.validate(config)
except experiments.PlanError as error:
    sys.exit(f"error: {error}")

ENV = "../envs/invgrad.yaml"
COMPUTE = experiments.compute_specs(config)
VICTIMS = experiments.victims(config, CELLS)
TARGETS = experiments.targets(config, CELLS)
CONFIG_LABEL = ", ".join(str(f) for f in workflow.configfiles) or "config/config.yaml"
GPU = 1 if str(config["device"]).startswith("cuda") else 0
NOTEBOOK_EXPERIMENTS = list(CELLS) + list(COMPUTE)

# A checkpoint that does not match the sha256 in its .json (a damaged pull, an edited file) stops the workflow
# here: never attacked, never silently retrained over. `dvc pull` restores it; deleting it retrains it.
for _checkpoint in VICTIMS:
    if Path(_checkpoint).is_file():
        try:
            training.verify_checkpoint(_checkpoint)
        except training.CheckpointMismatchError as error:
            sys.exit(f"error: {error}")
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

# Where each needed training split will come from (data.resolve_training_source, without network here).
for _dataset in ("CIFAR10", "CIFAR100"):
    if any(v["dataset"] == _dataset for v in VICTIMS.values()):
        _available, _why = experiments.training_data_status(config, _dataset)
        print(
            (
                f"note: trained {_dataset} victims: {_why}"
                if _available
                else f"note: trained {_dataset} cells will be marked '{_why}'"
            ),
            file=sys.stderr,
        )


def spec_json(experiment, cell):
    return json.dumps(CELLS[experiment][cell], sort_keys=True)


def cell_outputs(experiment):
    """Per-image JSONs of one cell (pattern with {cell}) — every cell of an experiment has the same targets."""
    names = next(iter(CELLS[experiment].values()))["selection"]["names"]
    return expand(f"results/{experiment}/{{{{cell}}}}/{{name}}.json", name=names)


def victim_of(experiment):
    def inputs(wildcards):
        path = CELLS[experiment][wildcards.cell]["victim"]
        return [path] if path else []

    return inputs


def extraction_flag(dataset):
    """The extraction flag when the training folder comes from data.archives.<dataset>.

    Once written, the flag stays an input even though the folder now exists: the set of inputs of a trained
    victim must not change between runs, or Snakemake would retrain it. A folder the user unpacked by hand (no
    flag) needs no extraction.
    """
    source = config["data"]["train"].get(dataset) or ""
    archive = config["data"]["archives"].get(dataset)
    if (
        not source.startswith("image-folder:")
        or not archive
        or not Path(archive).is_file()
    ):
        return []
    flag = f"{config['data']['root']}/.{dataset}.extracted"
    if Path(flag).exists():
        return [flag]
    decoded = [experiments.split_cache(dataset, split) for split in ("train", "test")]
    if all((decoded_cache.read_status(p) or {}).get("status") == "ok" for p in decoded):
        return []  # decoded splits pulled by DVC: nothing to unpack
    return [] if Path(source.split(":", 1)[1]).is_dir() else [flag]


def cell_images(experiment):
    return [
        f"results/{experiment}/{cell}/images.pt" for cell in CELLS.get(experiment, {})
    ]
