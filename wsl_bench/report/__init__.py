"""Reports rebuilt from a run folder's records alone: ``tables`` (results.csv/md/tex, index.html),
``figures`` (the report's figures) and ``describe`` (the per-preset geometry table of the methods).
"""
