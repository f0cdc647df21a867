# One rule per experiment (figure_<experiment>), generated from the registry: papermill runs the experiment's
# notebook once, into results/<experiment>/<experiment>.ipynb, and the figures its module lists
# (figures/<stem>.png, in the HTML report with the module's caption, and .pdf) are the rule's declared outputs, so
# `snakemake figures/table1_grid.png` makes exactly that experiment's figures. Plotting reads the tables and
# images.pt only, so editing a notebook never reruns an attack.
for _name in NOTEBOOK_EXPERIMENTS:
    _experiment = registry.get(_name)

    rule:
        name:
            f"figure_{_name}"
        input:
            notebook=_experiment.notebook_path,
            table=f"results/{_name}/table.csv",
            images=cell_images(_name),
        output:
            notebook=f"results/{_name}/{_name}.ipynb",
            png=[
                report(
                    f"figures/{stem}.png",
                    caption="../report/figure.rst",
                    category="Figures",
                    subcategory=_name,
                )
                for stem in _experiment.figures
            ],
            pdf=[f"figures/{stem}.pdf" for stem in _experiment.figures],
        log:
            f"logs/figures/{_name}.log",
        benchmark:
            f"results/benchmarks/figures/{_name}.tsv"
        conda:
            ENV
        params:
            experiment=_name,
            results=lambda w, input: os.path.dirname(input.table),
            recovered=config["report"]["recovered_psnr"],
            label=CONFIG_LABEL,
            caption=constant(_experiment.caption),  # may hold braces, not wildcards
        shell:
            "papermill {input.notebook} {output.notebook} -p results_dir {params.results} -p figures_dir figures "
            "-p config_label {params.label:q} -p recovered_psnr {params.recovered} --no-progress-bar > {log} 2>&1"


# Each experiment's figure source data, committed with the figures (figures/data/<experiment>/): the notebooks
# re-plot from it in a clone without results/ (invgrad.replication.notebook.results_or_committed). Only this rule
# writes it and no rule reads it, so a committed copy never satisfies an attack: `make` in a fresh clone still
# recomputes every result, then refreshes this copy.
rule figure_data:
    input:
        table="results/{experiment}/table.csv",
        images=lambda w: cell_images(w.experiment),
    output:
        directory("figures/data/{experiment}"),
    log:
        "logs/figures/data_{experiment}.log",
    benchmark:
        "results/benchmarks/figures/data_{experiment}.tsv"
    wildcard_constraints:
        experiment=one_of(NOTEBOOK_EXPERIMENTS),
    conda:
        ENV
    params:
        results=lambda w, input: os.path.dirname(input.table),
    shell:
        "python scripts/export_figure_data.py --results {params.results} --out {output} > {log} 2>&1"
