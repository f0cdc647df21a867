# One job per cell: all of a cell's users are attacked in one batched reconstruct_many call; each image (user)
# still gets its own JSON. Wildcard {cell} names the setting, e.g. table1: {model}_{weights}_{method}.
for _experiment in CELLS:

    rule:
        name:
            f"attack_{_experiment}"
        input:
            victim_of(_experiment),
        output:
            records=cell_outputs(_experiment),
            images=f"results/{_experiment}/{{cell}}/images.pt",
        log:
            f"logs/{_experiment}/{{cell}}.log",
        benchmark:
            f"benchmarks/out/{_experiment}/{{cell}}.tsv"
        wildcard_constraints:
            cell="|".join(CELLS[_experiment]),
        group:
            "attacks"  # cluster only: --group-components attacks=N packs N cells into one submission
        conda:
            ENV
        threads: config["threads"]
        resources:
            gpu=GPU,
        params:
            spec=lambda w, experiment=_experiment: spec_json(experiment, w.cell),
            out=lambda w, output: os.path.dirname(output.images),
        shell:
            "python scripts/attack_cell.py --spec {params.spec:q} --cell {wildcards.cell} --out {params.out} "
            "--threads {threads} > {log} 2>&1"
