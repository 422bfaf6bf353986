"""Stylizing batches of images with every control (``pipeline``), the memory and progress a run
will take (``resources``), and what the "auto" dtype means on this machine (``precision``)."""
