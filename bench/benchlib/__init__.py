"""Helpers only the offline benchmark scripts in ``bench/`` use; they are not part of the ``rerankd`` wheel.

Why a package beside the scripts: ``python bench/X.py`` puts ``bench/`` first on ``sys.path``, so every
script imports ``benchlib`` without installing anything, and the tests reach it through pytest's
``pythonpath``. What ``rerankd bench`` needs at run time (the card and cross-encoder baselines) stays in
``rerankd.benchmark.reference``.

* :mod:`benchlib.engine_path`: rerankd's scoring path without HTTP, batched by the server's own cut rule.
* :mod:`benchlib.agreement`: how far two score lists are apart (max |Δ|, Spearman, ranking).
* :mod:`benchlib.serve`: a real ``rerankd serve`` process for the scripts that measure over HTTP, and its RSS.
* :mod:`benchlib.cpu`: the CPU knobs a script sets for itself (``--malloc``, oneDNN bf16 matmuls).
* :mod:`benchlib.results`: the JSON file each run writes under ``bench/results/``.
"""
