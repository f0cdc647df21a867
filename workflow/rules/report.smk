rule replication_report:
    """figures/REPORT.md: every claim of PAPER §8 — the paper's number, ours, the verdict — and stage runtimes."""
    input:
        tables=expand("results/{experiment}/table.csv", experiment=NOTEBOOK_EXPERIMENTS),
        figures=[f for e in NOTEBOOK_EXPERIMENTS for f in figure_files(e, "png")],
    output:
        report(
            "figures/REPORT.md",
            caption="../report/report.rst",
            category="Replication report",
        ),
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/out/report.tsv"
    conda:
        ENV
    params:
        label=CONFIG_LABEL,
        recovered=config["report"]["recovered_psnr"],
    shell:
        "python scripts/make_report.py --results results --benchmarks benchmarks/out --config-label {params.label:q} "
        "--recovered-psnr {params.recovered} --out {output} > {log} 2>&1"
