"""Oracle labelling as assets of the family: `oracle_calibration` and `oracle_labels`."""
