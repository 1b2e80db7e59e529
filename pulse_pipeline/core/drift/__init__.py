"""Drift: have the annotations moved away from what the production adapter was trained on?

- `sides`: the reference (the production snapshot's train split) and the recent annotations,
  in the same representation (model input text and target);
- `embeddings`: mean-pooled sentence embeddings, cached per example id in the artifact store;
- `stats`: MMD^2 with a permutation p-value, domain-classifier AUC, PSI and Jensen-Shannon;
- `report`: the report, its decision, report.json and the plot.
"""
