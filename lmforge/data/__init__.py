"""Dataset reading, format detection, a named registry, encoding through the chat template (cached), streaming,
packing and batching."""
from lmforge.data.collator import PadCollator, PaddingFreeCollator
from lmforge.data.dataset import DataReport, build_datasets, encode_rows, load_rows, pack
from lmforge.data.formats import RowError, detect_format, normalize
from lmforge.data.readers import Row, iter_dataset, read_dataset
from lmforge.data.registry import list_datasets, load_custom_dataset_info, register_dataset
from lmforge.data.store import TokenStore

__all__ = ['PadCollator', 'PaddingFreeCollator', 'DataReport', 'build_datasets', 'encode_rows', 'load_rows', 'pack',
           'RowError', 'detect_format', 'normalize', 'Row', 'iter_dataset', 'read_dataset', 'list_datasets',
           'load_custom_dataset_info', 'register_dataset', 'TokenStore']
