"""Settings shared by the training, sampling and evaluation tests."""
# Smaller than the tiny presets: seconds per run on two cores.
SMALL = ["resolution=16", "model.channels=16", "model.head_channels=16", "train.batch_size=4", "train.log_every=1",
         "train.sample_steps=3", "train.n_samples=4", "train.val_batches=1"]
