"""Compression: prune, cluster, quantize, distill, low-rank, and a search over recipes."""
