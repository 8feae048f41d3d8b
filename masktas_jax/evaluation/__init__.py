"""Scoring subnets: the evaluator over a split's batches, the label-free
fitness and its signals, the evolution, the baselines one picks without
it, and the linear probe."""
