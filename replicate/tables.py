"""Tables beside the paper's: one helper that puts the paper's numbers and ours in one tidy frame.

``beside_paper(ours, paper)`` stacks the paper's rows (``source = "paper"``) above ours (``source = "ours"``) with
the union of their columns, so a table shows, per row key, the published number next to the replicated one. Rows
of the paper come from its spec (``../shared/papers/<id>.md``): a value the spec does not give stays empty (NaN),
never invented.
"""

from __future__ import annotations

import pandas as pd

SOURCES = ("paper", "ours")


def beside_paper(ours: pd.DataFrame, paper: pd.DataFrame | list[dict] | None) -> pd.DataFrame:
    """``paper`` rows (source=paper) then ``ours`` (source=ours); ``source`` is the first column."""
    ours = ours.assign(source="ours")
    if paper is None or len(paper) == 0:
        frame = ours
    else:
        paper = pd.DataFrame(paper).assign(source="paper")
        frame = pd.concat([paper, ours], ignore_index=True)
    cols = ["source", *[c for c in frame.columns if c != "source"]]
    return frame[cols].reset_index(drop=True)


def quantities(rows) -> pd.DataFrame:
    """A two-column ``quantity, value`` table of what ran (sizes, counts, budgets), values kept as given (ints stay
    ints): the table the notebook's prose is generated from."""
    return pd.DataFrame(list(rows), columns=["quantity", "value"]).astype({"value": object})
