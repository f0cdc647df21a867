rule table:
    """Per-experiment tables from the per-image JSONs: table.csv (per cell) and images.csv (per image)."""
    input:
        lambda w: TARGETS[w.experiment],
    output:
        table="results/{experiment}/table.csv",
        images="results/{experiment}/images.csv",
    log:
        "logs/tables/{experiment}.log",
    benchmark:
        "benchmarks/out/tables/{experiment}.tsv"
    wildcard_constraints:
        experiment="|".join(CELLS) if CELLS else "none",
    conda:
        ENV
    params:
        convergence=config["report"]["convergence_db"],
    shell:
        "python scripts/make_table.py --experiment {wildcards.experiment} --out {output.table} "
        "--convergence-db {params.convergence} {input} > {log} 2>&1"


rule analytic_table:
    """Analytic FC-layer input recovery (arXiv 2003.14053, the fully-connected-layer proposition): relative error per model, batch size, precision."""
    output:
        table="results/analytic/table.csv",
        trials="results/analytic/trials.csv",
    log:
        "logs/tables/analytic.log",
    benchmark:
        "benchmarks/out/tables/analytic.tsv"
    conda:
        ENV
    threads: config["threads"]
    params:
        spec=lambda w: json.dumps(COMPUTE["analytic"]),
    shell:
        "python scripts/analytic_table.py --spec {params.spec:q} --out {output.table} --threads {threads} > {log} 2>&1"


rule labels_table:
    """Label recovery accuracy from the last layer's gradient (iDLG for one image, K smallest row sums for K)."""
    output:
        table="results/labels/table.csv",
        trials="results/labels/trials.csv",
    log:
        "logs/tables/labels.log",
    benchmark:
        "benchmarks/out/tables/labels.tsv"
    conda:
        ENV
    threads: config["threads"]
    params:
        spec=lambda w: json.dumps(COMPUTE["labels"]),
    shell:
        "python scripts/labels_table.py --spec {params.spec:q} --out {output.table} --threads {threads} > {log} 2>&1"
