"""Training from image-level labels: ``trainer`` (the loop), ``policies`` (what the loop calls after
each epoch: best-checkpoint selection, log and curves), ``data`` (training batches),
``augment`` (augmentations a method declares), ``cache`` (trained weights kept under a key of
everything that decides them) and ``distributed`` (the process group and its helpers).

The trainer knows methods only through the contract in ``wsl_bench.saliency``; which method to
train, with which options and data, is decided by ``wsl_bench.pipeline``.
"""
