"""The metrics of `histogen eval`, one module each, in the order they are measured and reported
(the model-free ones lead). Each module's `measure(ev, comparison)` records its numbers and floor
on the Evaluation, or says on it why it was skipped; a new metric is a module and a line here."""
from __future__ import annotations

from histogen.evaluation.metrics import (c2st, conditioning, diversity, frechet, memorisation, more_encoders, nuclei,
                                         per_label, precision_recall, reconstruction, stain, train_floor)

METRICS = (c2st, nuclei, stain, diversity, frechet, precision_recall, more_encoders, conditioning, reconstruction,
           memorisation, per_label, train_floor)
