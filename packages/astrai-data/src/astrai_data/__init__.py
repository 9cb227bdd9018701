"""AstrAI data: read a corpus, train its tokenizer, pack it into memory-mapped rows, sample them."""

from .__about__ import __version__
from .corpus import Corpus, CorpusError, find_corpus_files
from .dataset import IGNORE_INDEX, PackedDataset, PreferenceDataset, PromptDataset, open_dataset
from .format import FORMAT_VERSION, PackedFileError, tokenizer_fingerprint
from .inspection import PackReport, inspect_pack
from .packing import PackStats, pack_corpus
from .records import Record
from .sampler import ShuffledSampler
from .tokenizer_training import LanguageCompression, corpus_texts, measure_compression, train_tokenizer

__all__ = [
    "FORMAT_VERSION",
    "IGNORE_INDEX",
    "Corpus",
    "CorpusError",
    "LanguageCompression",
    "PackReport",
    "PackStats",
    "PackedDataset",
    "PackedFileError",
    "PreferenceDataset",
    "PromptDataset",
    "Record",
    "ShuffledSampler",
    "__version__",
    "corpus_texts",
    "find_corpus_files",
    "inspect_pack",
    "measure_compression",
    "open_dataset",
    "pack_corpus",
    "tokenizer_fingerprint",
    "train_tokenizer",
]
