# A split decoded as 'not run' (no local copy and no network then) is resolved again on every run: the user may be
# online now, or have supplied a folder or an archive (invgrad.data.cache). Nothing is deleted for that: the
# decode job's `retry` param takes a value unique to this invocation while the split says 'not run', and a changed
# param reruns the job (Snakemake's params trigger); a decoded split keeps a constant value and never reruns. A
# dry run plans no retry (`snakemake -n` after a finished run says there is nothing to be done). The note it prints
# is in common.smk's one `onstart:` (Snakemake keeps only the last handler registered).


rule extract_training_data:
    """Unpack data.archives.<dataset> (an image-folder tarball) into data.root, once."""
    input:
        archive=lambda w: config["data"]["archives"][w.dataset],
    output:
        flag=f"{config['data']['root']}/.{{dataset}}.extracted",
    log:
        "logs/data/extract_{dataset}.log",
    benchmark:
        "results/benchmarks/data/extract_{dataset}.tsv"
    priority: 100  # the first step of the DAG's longest path (data -> victim -> trained cells)
    conda:
        ENV
    params:
        root=lambda w, output: os.path.dirname(output.flag),
    shell:
        "python scripts/extract_data.py --archive {input.archive} --root {params.root} "
        "--flag {output.flag} > {log} 2>&1"


rule decode_split:
    """One split of the training data decoded once into uint8 tensors (data/cache/<dataset>-<split>.pt): the
    configured image folder (or its archive), else torchvision's download into data.root when data.download, else a
    'not run' file saying how to supply it (invgrad.data.resolve_training_source).
    The flag is ancient(): DVC restores it with a new mtime, which must not decode again (docs/DVC.md).
    """
    input:
        lambda w: [ancient(flag) for flag in extraction_flag(w.dataset)],
    output:
        f"{plan.CACHE_DIR}/{{dataset}}-{{split}}.pt",
    log:
        "logs/data/decode_{dataset}_{split}.log",
    benchmark:
        "results/benchmarks/data/decode_{dataset}_{split}.tsv"
    wildcard_constraints:
        split="train|test",
    priority: 100  # the victims wait on it: the longest path of the DAG starts here
    conda:
        ENV
    params:
        retry=retry_param,
        spec=lambda w: json.dumps(
            {
                "dataset": w.dataset,
                "source": config["data"]["train"].get(w.dataset),
                "archive": config["data"]["archives"].get(w.dataset),
                "download": config["data"].get("download", True),
                "split": w.split,
                "data_root": config["data"]["root"],
            }
        ),
    shell:
        "python scripts/decode_split.py --spec {params.spec:q} --out {output} > {log} 2>&1"


# The training spec of every victim the config needs, as one file: what the DVC stage `victims` depends on (instead
# of a hand-kept list of config keys), so DVC retrains exactly when a victim's spec changes. Snakemake rewrites it
# only when the specs change (params trigger); the attacks do not depend on it.
rule victim_plan:
    output:
        VICTIM_PLAN,
    log:
        "logs/data/victim_plan.log",
    localrule: True
    conda:
        ENV
    params:
        spec=json.dumps(VICTIMS, sort_keys=True),
    shell:
        "python scripts/victim_plan.py --spec {params.spec:q} --out {output} > {log} 2>&1"


# Every victim checkpoint the config needs: the target of the DVC stage `victims` (dvc.yaml, docs/DVC.md).
rule victims:
    input:
        list(VICTIMS),
    localrule: True


rule train_victim:
    """Conservative recipe (the official code's inversefed/training defaults) on the decoded split, accuracy on held-out test images; without training
    data the checkpoint records 'not run'."""
    input:
        train=f"{plan.CACHE_DIR}/{{dataset}}-train.pt",
        test=f"{plan.CACHE_DIR}/{{dataset}}-test.pt",
    output:
        checkpoint="results/victims/{dataset}/{model}_e{epochs}.pt",
        meta="results/victims/{dataset}/{model}_e{epochs}.json",
    log:
        "logs/train/{dataset}_{model}_e{epochs}.log",
    benchmark:
        "results/benchmarks/train/{dataset}_{model}_e{epochs}.tsv"
    priority: 90  # the trained cells wait on it
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
    params:
        spec=lambda w, output: json.dumps(VICTIMS[output.checkpoint]),
    shell:
        "python scripts/train_victim.py --spec {params.spec:q} --out {output.checkpoint} "
        "--threads {threads} > {log} 2>&1"
