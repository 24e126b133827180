"""Benchmark adapters of the evaluation entry (``python -m mmtrain.evaluate +eval=<name>``).

One module per benchmark, each reading the benchmark's released on-disk format and scoring it as its
protocol says (../shared/spec/evaluation.md): ``mbeir`` (and the toy world), ``mmeb``, ``mteb_eval``,
``xtd``, ``circo``, ``rococo``, ``fg``, ``toy_variants``. Shared pieces: ``context`` (distributed,
cached encoding and sharded exact search), ``paper`` (published numbers); results and their report
files are ``mmtrain.eval.report``'s (one schema for benchmarks and training runs). Kept import-light:
``mmtrain.config`` imports ``schemas`` from here.
"""
