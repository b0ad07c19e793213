"""Built-in methods. Importing this package registers every one of them in ``METHODS``."""

from wsl_bench.methods import (  # noqa: F401
    baselines,
    cam,
    captum_methods,
    glam,
    gmic,
    gradcam,
    segmentation,
)
