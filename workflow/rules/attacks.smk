# One job per cell of any attack experiment: all of a cell's users are attacked in one batched reconstruct_many call;
# each image (user) still gets its own results/<experiment>/<cell>/<image>.json, written before images.pt, which
# marks the cell done. {cell} names the setting (its experiment module says how, e.g. table1:
# {model}_{weights}_{method}). The job verifies a trained victim's checkpoint (sha256) when it loads it. A killed
# job resumes each of its budget runs from its own hidden state files in the cell's folder (rerun-incomplete);
# the spec's digest, stored there and in every record, keeps runs and records of another spec out. A deleted
# per-image record makes the cell run again (records_stamp).
rule attack:
    input:
        victim_of,
        records_stamp,
        val_extraction,
    output:
        images="results/{experiment}/{cell}/images.pt",
    log:
        "logs/{experiment}/{cell}.log",
    benchmark:
        "results/benchmarks/{experiment}/{cell}.tsv"
    wildcard_constraints:
        experiment=one_of(CELLS),
        cell=one_of(sorted({c for cells in CELLS.values() for c in cells})),
    group:
        "attacks"  # cluster only: --group-components attacks=N packs N cells into one submission
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
    params:
        spec=spec_json,
        out=lambda w, output: os.path.dirname(output.images),
    shell:
        "python scripts/attack_cell.py --spec {params.spec:q} --cell {wildcards.cell} --out {params.out} "
        "--threads {threads} > {log} 2>&1"
