"""An interpretability score with no LLM: token-set explanations, scored on text they never saw.

For each feature, the explanation is the set of tokens at which its top read-half contexts peak
(tokens peaking in at least two of them, and always the commonest). On the test half, as delphi
scores an LLM's explanation:
    detection  does a context contain an explanation token? Firing contexts (uniform samples)
               against random contexts where the feature fires nowhere; balanced accuracy.
    fuzzing    in a firing context, are the highlighted tokens explanation tokens? The activating
               tokens highlighted against as many non-activating ones; balanced accuracy.
A feature that fires exactly on one token scores 1.0 on both; a feature that fires at random, 0.5.
"""

from __future__ import annotations

from collections import Counter

import torch
from jaxtyping import Float, Int
from torch import Tensor

MIN_EXAMPLES = 4
"""Fewer firing (or non-firing) test contexts than this and a feature gets no score."""


def explanation(peak_tokens: list[int], most: int = 10) -> set[int]:
    counts = Counter(peak_tokens).most_common()
    if not counts:
        return set()
    return {t for t, n in counts[:most] if n >= 2} | {counts[0][0]}


def balanced_accuracy(predicted: Tensor, actual: Tensor) -> float:
    pos, neg = actual.bool(), ~actual.bool()
    return 0.5 * (float(predicted[pos].float().mean()) + float((~predicted[neg]).float().mean()))


def detection(expl: set[int], firing: Int[Tensor, "n ctx"], quiet: Int[Tensor, "m ctx"]) -> float | None:
    """`firing`/`quiet`: token ids of contexts (-1 off the window)."""
    if len(firing) < MIN_EXAMPLES or len(quiet) < MIN_EXAMPLES or not expl:
        return None
    vocab = torch.tensor(sorted(expl))
    contexts = torch.cat([firing, quiet])
    predicted = torch.isin(contexts, vocab).any(1)
    actual = torch.cat([torch.ones(len(firing)), torch.zeros(len(quiet))])
    return balanced_accuracy(predicted, actual)


def fuzzing(expl: set[int], tokens: Int[Tensor, "n ctx"], acts: Float[Tensor, "n ctx"],
            gen: torch.Generator) -> float | None:
    """Each firing context twice: its activating tokens highlighted (correct), and as many of its
    non-activating tokens drawn at random (incorrect). The judge calls a highlighting correct when
    at least half its tokens are explanation tokens."""
    if len(tokens) < MIN_EXAMPLES or not expl:
        return None
    vocab = torch.tensor(sorted(expl))
    verdicts, actual = [], []
    for t, a in zip(tokens, acts, strict=True):
        on, off = (a > 0).nonzero().squeeze(1), ((a == 0) & (t >= 0)).nonzero().squeeze(1)
        if len(on) == 0 or len(off) < len(on):
            continue
        decoy = off[torch.randperm(len(off), generator=gen)[: len(on)]]
        for chosen, truth in ((on, True), (decoy, False)):
            verdicts.append(torch.isin(t[chosen], vocab).float().mean() >= 0.5)
            actual.append(truth)
    if len(actual) < 2 * MIN_EXAMPLES:
        return None
    return balanced_accuracy(torch.stack(verdicts), torch.tensor(actual))


def score_feature(peaks: list[int], scorer, tokens: Int[Tensor, "window pos"], feature: int,
                  negatives: tuple[Tensor, Tensor], gen: torch.Generator
                  ) -> tuple[set[int], float | None, float | None]:
    """A feature's explanation (from the tokens its top read-half contexts peak at) and its
    detection and fuzzing scores on the test half (`scorer`, whose contexts index `tokens`)."""
    expl = explanation(peaks)
    firing, acts = scorer.firing_contexts(tokens, feature)
    quiet_tokens, fires = negatives
    return expl, detection(expl, firing, quiet_tokens[~fires[:, feature]]), fuzzing(expl, firing, acts, gen)
