from invgrad.replication.records import spec_digest


rule table:
    """Per-experiment tables from the per-image JSONs: table.csv (per cell) and images.csv (per image); the
    experiment's module names its columns and the keys table.csv groups by. Each cell's spec digest is a param:
    a record of another spec leaves its cell "not run: mixed specs", and a changed spec reruns the table.
    """
    input:
        lambda w: cell_images(w.experiment),
    output:
        table="results/{experiment}/table.csv",
        images="results/{experiment}/images.csv",
    log:
        "logs/tables/{experiment}.log",
    benchmark:
        "results/benchmarks/tables/{experiment}.tsv"
    wildcard_constraints:
        experiment=one_of(CELLS),
    conda:
        ENV
    params:
        convergence=config["report"]["convergence_db"],
        modules=MODULES,
        records=lambda w: TARGETS[w.experiment],
        # {cell: digest of the spec its attack job runs with}: what every record of the cell must come from
        cell_specs=lambda w: json.dumps(
            {c: spec_digest(s) for c, s in CELLS[w.experiment].items()}, sort_keys=True
        ),
    shell:
        "python scripts/make_table.py --experiment {wildcards.experiment} --out {output.table} "
        "--convergence-db {params.convergence} --cell-specs {params.cell_specs:q} {params.modules} "
        "{params.records} > {log} 2>&1"


rule compute_table:
    """An attack-free experiment's tables (analytic FC-layer recovery, label recovery): its module's script writes
    table.csv and trials.csv from the experiment's config block."""
    output:
        table="results/{experiment}/table.csv",
        trials="results/{experiment}/trials.csv",
    log:
        "logs/tables/{experiment}.log",
    benchmark:
        "results/benchmarks/tables/{experiment}.tsv"
    wildcard_constraints:
        experiment=one_of(COMPUTE),
    conda:
        ENV
    threads: config["threads"]
    params:
        script=lambda w: registry.get(w.experiment).script,
        spec=lambda w: json.dumps(COMPUTE[w.experiment]),
    shell:
        "python {params.script} --spec {params.spec:q} --out {output.table} --threads {threads} > {log} 2>&1"
