"""AstrAI data: read a corpus, train its tokenizer, pack it into memory-mapped token windows."""

from .__about__ import __version__
from .corpus import Corpus, CorpusError, Record, find_corpus_files
from .dataset import IGNORE_INDEX, PackedDataset
from .format import FORMAT_VERSION, PackedFileError, tokenizer_fingerprint
from .packing import PackStats, pack_corpus
from .tokenizer_training import LanguageCompression, corpus_texts, measure_compression, train_tokenizer

__all__ = [
    "FORMAT_VERSION",
    "IGNORE_INDEX",
    "Corpus",
    "CorpusError",
    "LanguageCompression",
    "PackStats",
    "PackedDataset",
    "PackedFileError",
    "Record",
    "__version__",
    "corpus_texts",
    "find_corpus_files",
    "measure_compression",
    "pack_corpus",
    "tokenizer_fingerprint",
    "train_tokenizer",
]
