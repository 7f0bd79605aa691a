"""pytest (nbval) collection under notebooks/: the clean twins in notebooks/clean/ have no
outputs to compare and are checked by tests/test_clean_notebooks.py instead."""

collect_ignore = ["clean"]
