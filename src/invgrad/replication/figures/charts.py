"""The replication's charts: Table 1's PSNR per image, FedAvg against local steps, the batch histogram, defenses,
label recovery, architecture and the analytic inversion (arXiv 2003.14053, Tables 1-2 and Secs. 4-6)."""

from __future__ import annotations

from .base import (
    METHOD_NAMES,
    MIN_SPREAD_N,
    MODEL_NAMES,
    ExperimentData,
    finish,
    message,
    network_label,
)


def table1_psnr(data: ExperimentData, paper_psnr: float = 18.0):
    """Each image's PSNR per network and method (boxes from n = 5), the paper's number as a labelled line."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    ran = data.ran
    if ran.empty:
        return message("no Table-1 cell ran", data, "Table 1: PSNR per image")
    ran = ran.assign(
        network=[network_label(m, w) for m, w in zip(ran.model, ran.weights, strict=True)],
        attack=ran.method.map(lambda m: METHOD_NAMES.get(m, m)),
    )
    fig, ax = plt.subplots(figsize=(7, 3.4))
    boxes = bool(ran.groupby(["network", "attack"]).size().min() >= MIN_SPREAD_N)
    if boxes:
        sns.boxplot(data=ran, x="network", y="psnr", hue="attack", ax=ax, showfliers=False)
    dots = {"palette": "dark:k", "legend": False} if boxes else {}
    sns.stripplot(data=ran, x="network", y="psnr", hue="attack", dodge=True, size=3, ax=ax, **dots)
    ax.axhline(
        paper_psnr,
        ls="--",
        lw=0.8,
        color="gray",
        label=f"paper, proposed on untrained LeNet (Zhu): {paper_psnr:.2f} dB",
    )
    ax.set_ylabel("PSNR per image [dB]")
    ax.set_xlabel("")
    ax.legend(
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        frameon=False,
        title="attack",
        title_fontsize=7,
    )
    spread = "boxes: quartiles, whiskers 1.5 IQR" if boxes else "no boxes below n=5 per cell"
    return finish(fig, data, f"Table 1: PSNR of each reconstructed image ({spread})")


def fedavg_psnr(data: ExperimentData):
    """Mean PSNR per FedAvg setting against local steps, the update's cosine with the one-step gradient written
    beside each point (a heatmap only from 3 × 3 settings, where a colour scale says something)."""
    import matplotlib.pyplot as plt

    ran = data.ran
    if ran.empty:
        return message("no FedAvg cell ran", data, "FedAvg: PSNR against local steps")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for (images, batch, lr), part in ran.groupby(["images", "batch_size", "local_lr"]):
        means = part.groupby("local_steps").agg(
            psnr=("psnr", "mean"), cos=("update_cosine", "mean"), n=("psnr", "size")
        )
        batch_text = "full batch" if int(batch) == 0 else f"B={int(batch)}"
        ax.plot(means.index, means.psnr, marker="o", label=f"K={int(images)} images, {batch_text}, τ={lr:g}")
        for steps, row in means.iterrows():
            ax.annotate(
                f"cos {row.cos:.2f}, n={int(row.n)}",
                (steps, row.psnr),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=6,
            )
    ax.set_xticks(sorted(ran.local_steps.unique()))
    ax.set_xlabel("local steps n")
    ax.set_ylabel("mean PSNR [dB] over users")
    ax.margins(x=0.2, y=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return finish(fig, data, "Table 2: FedAvg, PSNR against local steps (cos: update vs one-step gradient)")


def batch_psnr(data: ExperimentData):
    import matplotlib.pyplot as plt

    record = data.record(data.table.cell.iloc[0], "u0")
    values = [v for v in record.get("psnr_per_image", []) if v == v]
    fig, ax = plt.subplots(figsize=(4.5, 2.8))
    ax.hist(values, bins=10, color="C0")
    ax.axvline(data.recovered_psnr, ls="--", color="gray", label=f"recovered: ≥ {data.recovered_psnr:g} dB")
    ax.set_xlabel("PSNR per image [dB]")
    ax.set_ylabel("images")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    recovered = sum(v >= data.recovered_psnr for v in values)
    return finish(fig, data, f"Fig. 6: {recovered} of {len(values)} images recovered")


def defenses_curves(data: ExperimentData):
    """PSNR against each defense's strength; ε of the noise levels on the top axis, not on the points."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    ran = data.ran
    base = ran[ran.defense == "none"].psnr.mean()
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.2), sharey=True)
    panels = (
        ("noise", "noise std σ (Gaussian, clipped)", True),
        ("prune", "fraction of entries kept p", False),
    )
    for ax, (kind, label, log) in zip(axes, panels, strict=True):
        part = ran[ran.defense == kind]
        if len(part):
            stats = part.groupby("level").psnr.agg(["mean", "std", "size"])
            spread = stats["std"] if stats["size"].min() >= MIN_SPREAD_N else None
            ax.errorbar(
                stats.index, stats["mean"], yerr=spread, marker="o", capsize=3, label="defended (mean)"
            )
            if log:
                ax.set_xscale("log")
            if kind == "noise" and "epsilon" in part:
                eps = part.groupby("level").epsilon.first()
                top = ax.secondary_xaxis("top")
                top.set_xticks(list(eps.index), [f"ε={e:.3g}" for e in eps], fontsize=6)
                top.xaxis.set_minor_locator(NullLocator())
        ax.axhline(base, ls="--", color="gray", label="no defense (mean)")
        ax.set_xlabel(label)
        ax.set_ylabel("PSNR [dB]")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    n = int(ran.groupby("defense").size().min()) if len(ran) else 0
    spread = "error bars: 1 s.d." if n >= MIN_SPREAD_N else f"means of n={n} images; no spread below n=5"
    return finish(fig, data, f"Defenses: PSNR against defense strength ({spread})")


def labels_accuracy(data: ExperimentData):
    """Share of labels recovered per batch size and model; spread as min-max whiskers clipped to [0, 1]."""
    import matplotlib.pyplot as plt
    import numpy as np

    trials = data.trials()
    stats = trials.groupby(["model", "batch_size"]).accuracy.agg(["mean", "min", "max", "size"]).reset_index()
    sizes = sorted(stats.batch_size.unique())
    models = list(dict.fromkeys(stats.model))
    fig, ax = plt.subplots(figsize=(6.5, 3))
    width = 0.8 / len(models)
    for m, model in enumerate(models):
        part = stats[stats.model == model].set_index("batch_size").reindex(sizes)
        x = np.arange(len(sizes)) + (m - (len(models) - 1) / 2) * width
        err = np.clip([part["mean"] - part["min"], part["max"] - part["mean"]], 0, 1)
        ax.bar(x, part["mean"], width, yerr=err, capsize=2, label=MODEL_NAMES.get(model, model))
    ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("images per update K (distinct labels)")
    ax.set_ylabel("share of labels recovered")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    n = int(stats["size"].min())
    return finish(
        fig, data, f"Label recovery from the gradient, untrained victims (whiskers: min-max of {n} trials)"
    )


def architecture_curves(data: ExperimentData):
    import matplotlib.pyplot as plt

    ran = data.ran
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3), sharey=True)
    for ax, axis, label in zip(
        axes, ("width", "depth"), ("width multiplier k (ResNet20-k)", "depth d (ResNet-d)"), strict=True
    ):
        part = ran[ran.axis == axis] if "axis" in ran else ran.iloc[0:0]
        for weights, rows in part.groupby("weights"):
            stats = rows.groupby("value").psnr.agg(["mean", "std", "size"])
            spread = stats["std"] if stats["size"].min() >= MIN_SPREAD_N else None
            ax.errorbar(stats.index, stats["mean"], yerr=spread, marker="o", capsize=3, label=f"{weights}")
        ax.set_xlabel(label)
        ax.set_ylabel("mean PSNR [dB]")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, title="weights")
    n = int(ran.groupby("cell").size().min()) if len(ran) else 0
    spread = "error bars: 1 s.d." if n >= MIN_SPREAD_N else f"means of n={n} images, no spread below n=5"
    return finish(fig, data, f"Architecture: PSNR against width and depth ({spread})")


def analytic_error(data: ExperimentData):
    import matplotlib.pyplot as plt
    import seaborn as sns

    trials = data.trials()
    trials = trials.assign(
        setting=trials.model.map(lambda m: MODEL_NAMES.get(m, m)) + ", K=" + trials.batch_size.astype(str)
    )
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    sns.stripplot(data=trials, x="setting", y="rel_error", hue="dtype", dodge=True, ax=ax)
    ax.set_yscale("log")
    ax.set_xlabel("")
    ax.set_ylabel("relative error of the recovered input")
    ax.tick_params(axis="x", labelsize=6, rotation=30)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, title="dtype")
    return finish(
        fig, data, "Analytic FC inversion: K=1 against the input, K>1 against the weighted combination"
    )
