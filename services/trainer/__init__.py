"""The trainer service: data sets, the durable job queue, training recipes, prediction, artifacts."""
