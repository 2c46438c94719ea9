"""The tiny model's training stream: its family weights take effect, and the
evaluation regenerates exactly the sequences training drew, so that its
"unseen" test set really is unseen."""

from __future__ import annotations

import random
from collections import Counter
from itertools import islice

from nextterm_mlx.vocab import EOS, encode_prompt
from scripts.eval_tiny import training_sequences
from scripts.synthetic_sequences import FAMILIES, sample
from scripts.train_tiny import SequenceStream

# Recurrences 50 times as likely as each of the 11 other families: 50/61 of the draws.
WEIGHTS = {name: 1.0 for name in FAMILIES} | {"recurrence": 50.0}


def test_family_weights_set_the_mix():
    rng = random.Random(5)
    families = Counter(sample(rng, WEIGHTS)[0] for _ in range(600))
    assert 0.75 < families["recurrence"] / 600 < 0.89  # expected 0.82


def test_the_evaluation_regenerates_every_sequence_training_drew():
    stream = SequenceStream(seed=3, max_tokens=64, family_weights=WEIGHTS)
    trained = list(islice(stream, 300))
    assert stream.dropped > 0  # the regeneration must count the dropped draws too

    meta = {"seed": 3, "sequences_generated": stream.generated, "family_weights": WEIGHTS}
    regenerated = {tuple(encode_prompt(list(terms)) + [EOS]) for terms in training_sequences(meta)}
    assert all(tuple(ids) in regenerated for ids in trained)
