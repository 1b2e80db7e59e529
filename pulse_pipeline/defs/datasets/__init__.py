"""From annotations to frozen dataset snapshots: review queue, examples, dataset_snapshot."""
