"""How the network runs fast: the selective-scan backends and their dispatcher (``scan``), the passes
compiled by Numba on CPUs (``fused``), the CNN decoder on NNPACK's Winograd convolutions
(``winograd``), and stages replayed from CUDA graphs (``cuda_graphs``)."""
