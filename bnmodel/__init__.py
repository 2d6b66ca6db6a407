"""bnmodel: batch-normalized MLPs, trained fast, exported with BN folded, served over KServe v2.

This package is imported by the server too (``bnmodel.serve``), so nothing here may import torch.
"""

__version__ = "0.1.0"
