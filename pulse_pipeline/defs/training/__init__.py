"""From a dataset snapshot to a trained adapter version: `<family>/adapter` and the retrain jobs."""
