# One parameterised notebook per experiment (papermill), executed into results/<experiment>/<experiment>.ipynb; it
# writes the figures its module lists (figures/<stem>.png and .pdf). Plotting reads the tables and images.pt only, so
# editing a notebook never reruns an attack.
rule figure:
    input:
        notebook=lambda w: registry.get(w.experiment).notebook_path,
        table="results/{experiment}/table.csv",
        images=lambda w: cell_images(w.experiment),
    output:
        notebook=report(
            "results/{experiment}/{experiment}.ipynb",
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
    log:
        "logs/figures/{experiment}.log",
    benchmark:
        "results/benchmarks/figures/{experiment}.tsv"
    wildcard_constraints:
        experiment=one_of(NOTEBOOK_EXPERIMENTS),
    conda:
        ENV
    params:
        results=lambda w, input: os.path.dirname(input.table),
        recovered=config["report"]["recovered_psnr"],
        label=CONFIG_LABEL,
        caption=lambda w: registry.get(w.experiment).caption,
        figures=lambda w: [
            f"figures/{s}.{x}"
            for s in registry.get(w.experiment).figures
            for x in ("png", "pdf")
        ],
    shell:
        "papermill {input.notebook} {output.notebook} -p results_dir {params.results} -p figures_dir figures "
        "-p config_label {params.label:q} -p recovered_psnr {params.recovered} --no-progress-bar > {log} 2>&1 && "
        "for f in {params.figures}; do test -f $f || {{ echo the notebook wrote no $f >> {log}; exit 1; }}; done"
