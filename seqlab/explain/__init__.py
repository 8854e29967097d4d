"""seqlab.explain: pictures of what a trained model looks at, behind `seqlab explain`.

leap_maps: LEAP's implicit attention A [h, t, t] and gate a [t, h] per layer for one text,
drawn per layer and head as PNG, either as the pairwise line diagrams of the appendix of
"Attention Is All You Need" (Vaswani et al. 2017) or as heatmaps.
"""

from seqlab.explain.leap_maps import explain_run, focus_maps, render_focus_maps, token_labels

__all__ = ["explain_run", "focus_maps", "render_focus_maps", "token_labels"]
