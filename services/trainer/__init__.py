"""The trainer service: data sets, the durable job queue, recipes, prediction, artifacts."""
