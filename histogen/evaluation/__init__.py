"""The parts of `histogen eval` (the command's flow is histogen.evaluate): its settings, the real
patches (which slides, a seeded draw, their summaries and the feature cache), the generated
patches (sampled and written, or read), what every metric compares, and the metrics, one module
each (histogen.evaluation.metrics)."""
