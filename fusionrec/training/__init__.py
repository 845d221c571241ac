"""Training stage: options -> batches -> loop, with checkpoints; `loop.main` is `train_accelerate.py`."""
