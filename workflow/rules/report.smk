rule replication_report:
    """figures/claims.csv (every claim of the paper (arXiv 2003.14053) decided by invgrad.replication.claims) and figures/REPORT.md rendered from it."""
    input:
        tables=expand("results/{experiment}/table.csv", experiment=NOTEBOOK_EXPERIMENTS),
        images=expand("results/{experiment}/images.csv", experiment=list(CELLS)),
        notebooks=expand(
            "results/{experiment}/{experiment}.ipynb", experiment=NOTEBOOK_EXPERIMENTS
        ),
    output:
        report=report(
            "figures/REPORT.md",
            caption="../report/report.rst",
            category="Replication report",
        ),
        claims="figures/claims.csv",
    log:
        "logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    conda:
        ENV
    params:
        label=CONFIG_LABEL,
        recovered=config["report"]["recovered_psnr"],
        modules=MODULES,
    shell:
        "python scripts/make_report.py --results results --benchmarks results/benchmarks --config-label {params.label:q} "
        "--recovered-psnr {params.recovered} --claims {output.claims} --out {output.report} {params.modules} "
        "> {log} 2>&1"
