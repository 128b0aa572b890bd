"""The report: the numbers first (:mod:`selection.report.compute`), then each way of showing them.

``compute`` turns a records table into the report dict (regret, noise, rank agreement,
Appendix G); ``text`` (Markdown, the per-task tables), ``leaderboard`` (the terminal's view),
``noise_text`` (the noise's sentences), ``plots`` (the figures), ``html`` (one self-contained
page) and ``files`` (everything written to ``reports/<name>/``) render it; ``tables`` holds the
generic plain-text table helpers. Importing the package imports none of them.
"""
