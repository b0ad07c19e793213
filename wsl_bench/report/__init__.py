"""Reports rebuilt from a run folder's records alone.

``tables`` builds the report (results.csv/md/tex, details.csv, index.html) and calls the rest:
``summary`` (the ranked lead per class against the floor of the trivial baselines), ``equivalence``
(methods with identical maps, found from the records), ``families`` (method families, the flagship,
report order), ``page`` (the HTML page), ``markup`` and ``formatting`` (Markdown to HTML, numbers),
``figures`` and ``qualitative`` (the figures) on ``drawing``, ``styles`` and ``labels`` (shared
figure plumbing, per-method styles, non-overlapping direct labels); ``describe`` is the per-preset
geometry table of the methods.
"""
