"""Online grow/prune training (after Ahmadluei et al. 2023): the network finds its own widths.

Every ``eval_every_steps`` training steps (an *evaluation*) each channel's profit is
re-estimated on a few training batches and smoothed over evaluations (EMA)::

    profit_k = γ·norm(P_self,k) + (1−γ)·norm(P_next,k)    (``pruning.criteria.profit``)

where P_self is ``taylor_fo`` (the loss change if channel k goes), P_next how much the
next layers use channel k, and norm divides by the group's maximum. Channels split from
one another form a *family* that is scored as one channel (the sum of its members' terms
before squaring), and the group mean counts each family once, so a split leaves every
prune decision as it was (``pruning.criteria.profit``). Then:

* **prune** the channels whose EMA profit stayed below ``prune_threshold`` × the group's
  mean for ``patience`` evaluations in a row (never below ``min_channels``);
* **grow** the groups whose mean profit ranks in the top ``grow_top_q`` of all groups
  and that did not change for ``patience`` evaluations: ``ceil(grow_fraction·C)`` new
  filters, split from the highest-profit ones (Net2Wider, ``grow_method="split"``) or
  with zero outgoing weights (``"zero"``), never beyond ``max_width_mult`` × the width
  the group had at the start;
* carry the optimizer's momentum over: sliced for kept channels, zero for new ones,
  untouched tensors keep theirs.

Search stops when no group changed for ``stop_after`` evaluations, when a MACs budget
is met (reached from above, or filled from below to within ``BUDGET_TOLERANCE``), or
after ``max_epochs``; the current epoch is completed and ``finetune_epochs`` follow.
Over budget, pruning is more aggressive (no patience: the lowest-profit channels of a
global ranking go until MACs drop by ``OVER_BUDGET_STEP`` or reach the budget) and
nothing grows; under it, growth never crosses it. A search that ends above the budget
(``max_epochs`` ran out first) is cut to it at once, by the same global ranking, before
finetuning: the final model never exceeds the budget.

The search trains at the constant peak LR of the ``TrainConfig`` (widths are still
moving; a decayed LR would freeze new filters); finetuning decays from that rate (or
``finetune_lr``) to 0 by a cosine.

The package: ``config`` (the knobs, constants and budget check), ``state`` (EMA profits,
prune/grow plans and the surgery of one evaluation), ``loop`` (epochs, finetuning,
:func:`run_adaptive`).
"""

from __future__ import annotations

from pruning.adaptive.config import (
    BUDGET_TOLERANCE,
    CHURN_WINDOW,
    OVER_BUDGET_STEP,
    TRAIN_STEP_FORWARDS,
    AdaptiveConfig,
    check_budget,
    floor_width,
    smallest_macs,
)
from pruning.adaptive.loop import AdaptiveResult, run_adaptive
from pruning.adaptive.state import SearchState

__all__ = [
    "BUDGET_TOLERANCE",
    "CHURN_WINDOW",
    "OVER_BUDGET_STEP",
    "TRAIN_STEP_FORWARDS",
    "AdaptiveConfig",
    "AdaptiveResult",
    "SearchState",
    "check_budget",
    "floor_width",
    "run_adaptive",
    "smallest_macs",
]
