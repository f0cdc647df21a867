# One parameterised notebook per table/figure (papermill); the executed notebook is kept beside the results.
# Plotting reads the tables and images.pt only, so editing a notebook never reruns an attack.
FIGURES = {
    "table1": ["table1_psnr", "table1_grid", "table1_convergence"],
    "fedavg": ["fedavg_heatmap", "fedavg_grid", "fedavg_convergence"],
    "imagenet": ["imagenet_grid", "imagenet_convergence"],
    "batch": ["batch_grid", "batch_psnr", "batch_convergence"],
    "architecture": ["architecture_curves", "architecture_convergence"],
    "defenses": ["defenses_curves", "defenses_convergence"],
    "analytic": ["analytic_error"],
    "labels": ["labels_accuracy"],
}


def figure_files(experiment, ext):
    return [f"figures/{stem}.{ext}" for stem in FIGURES[experiment]]


for _experiment in NOTEBOOK_EXPERIMENTS:

    rule:
        name:
            f"figure_{_experiment}"
        input:
            notebook=f"notebooks/{_experiment}.ipynb",
            table=f"results/{_experiment}/table.csv",
            images=cell_images(_experiment),
        output:
            notebook=f"results/{_experiment}/{_experiment}.ipynb",
            png=[
                report(
                    path,
                    caption=f"../report/{_experiment}.rst",
                    category="Figures",
                    subcategory=_experiment,
                )
                for path in figure_files(_experiment, "png")
            ],
            pdf=figure_files(_experiment, "pdf"),
        log:
            f"logs/figures/{_experiment}.log",
        benchmark:
            f"benchmarks/out/figures/{_experiment}.tsv"
        conda:
            ENV
        params:
            results=lambda w, input: os.path.dirname(input.table),
            recovered=config["report"]["recovered_psnr"],
            label=CONFIG_LABEL,
        shell:
            "papermill {input.notebook} {output.notebook} -p results_dir {params.results} -p figures_dir figures "
            "-p config_label {params.label:q} -p recovered_psnr {params.recovered} --no-progress-bar > {log} 2>&1"
