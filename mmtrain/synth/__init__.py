"""mmE5 data synthesis as a pipeline stage: ``python -m mmtrain.synth out_dir=... num_samples=...``.

Stages (mmE5 §3.2), one module each:

    configure.py   task, modality combination (Table 6 weights), language (XLM-R, languages.py),
                   anchor image (corpus.py) and retrieved positive / hard-negative images (retrieval.py);
                   sample i's configuration depends only on (seed, i)
    prompts.py     the single-pass prompt: describe the images from four aspects, write the sample,
                   self-evaluate, revise
    generators.py  OpenAI-compatible chat endpoint (openai client) or a local transformers MLLM
    response.py    the answer's schema; the revised sample is kept
    pipeline.py    attempts, retries, rejections, concurrency, rate limit
    store.py       atomic part files + index: a killed run resumes without duplicates
    output.py      manifest, rejected list, canonical shards through the converters' writer

See docs/synthesis.md.
"""
