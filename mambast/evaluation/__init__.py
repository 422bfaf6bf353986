"""The paper's evaluation protocol: ArtFID, FID, LPIPS, CFSD of stylized images, for any method.

No ComfyUI import; needs SciPy (``pip install -r requirements-train.txt``) for FID's matrix
square root. The metric networks are built here in plain PyTorch and load their released
weights (:mod:`.weights` says which file goes where); nothing is downloaded.
"""

from .cfsd import CFSD, patch_similarity_divergence
from .frechet import feature_statistics, frechet_distance, frechet_distance_of_statistics
from .lpips import LPIPS
from .networks import ArtInception, alexnet_features, vgg19_to_relu3_1
from .protocol import PAPER, Evaluation, Scores, art_fid, evaluate_images
from .weights import (METRIC_FILES, METRICS_ENV, MetricNetworks, MetricWeightsMissing, find_metric_files,
                      load_metric_networks)

__all__ = ["CFSD", "patch_similarity_divergence", "feature_statistics", "frechet_distance",
           "frechet_distance_of_statistics", "LPIPS", "ArtInception", "alexnet_features", "vgg19_to_relu3_1",
           "PAPER", "Evaluation", "Scores", "art_fid", "evaluate_images", "METRIC_FILES", "METRICS_ENV",
           "MetricNetworks", "MetricWeightsMissing", "find_metric_files", "load_metric_networks"]
