"""Training: datasets, splits, preprocessing fitted on the train split, models, baselines."""
