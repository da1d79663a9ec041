"""One plotting style for every notebook."""
from __future__ import annotations


def style():
    """Apply the house style and return matplotlib.pyplot."""
    import matplotlib
    import matplotlib.pyplot as plt
    matplotlib.rcParams.update({
        "figure.figsize": (7.5, 4.2), "figure.dpi": 90, "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False, "font.size": 10, "legend.frameon": False,
    })
    return plt


def subplots(nrows: int = 1, ncols: int = 1, **kw):
    plt = style()
    return plt.subplots(nrows, ncols, constrained_layout=True, **kw)


def image_grid(images, titles=None, ncols: int = 4, cmap=None, size: float = 2.6):
    """Show a list of HxW or HxWx3 arrays in a grid, axes off."""
    import math
    n = len(images)
    rows = max(1, math.ceil(n / ncols))
    cols = min(ncols, n)
    fig, axes = subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap=cmap)
            if titles:
                ax.set_title(titles[i], fontsize=9)
    return fig
