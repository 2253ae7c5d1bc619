"""KServe predictors, retrieval and serving metrics."""
