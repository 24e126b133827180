"""The toy world as a data *source*: a seeded multimodal world in the M-BEIR layout (``world``, drawn
from ``scenes``, with the BEIR text set of ``text`` and the BPE of ``tokenizer``), the same world in
MMEB / Tevatron (``layouts``) and mmE5 (``mme5``) layouts, and RoCOCO / FG / XTD-style variants
(``variants``). Data and evaluation read it like any released dataset; it imports nothing later than
``mmtrain.data``."""
