"""Benchmark adapters of the evaluation entry (``python -m mmtrain.evaluate +eval=<name>``).

One module per benchmark, each reading the benchmark's released on-disk format and scoring it as its
protocol says (../shared/spec/evaluation.md): ``mbeir`` (and the toy world), ``mmeb``, ``mteb_eval``,
``xtd``, ``circo``, ``rococo``, ``fg``, ``toy_variants``. Shared pieces: ``context`` (distributed,
cached encoding and sharded exact search), ``results`` (tables, report files, wandb), ``paper``
(published numbers). Kept import-light: ``mmtrain.config`` imports ``schemas`` from here.
"""
