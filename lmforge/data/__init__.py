"""Dataset reading, format detection, encoding through the chat template, packing and batching."""
from lmforge.data.collator import PadCollator, PaddingFreeCollator
from lmforge.data.dataset import DataReport, build_datasets, encode_rows, load_rows, pack
from lmforge.data.formats import RowError, normalize
from lmforge.data.readers import Row, read_dataset

__all__ = ['PadCollator', 'PaddingFreeCollator', 'DataReport', 'build_datasets', 'encode_rows', 'load_rows', 'pack',
           'RowError', 'normalize', 'Row', 'read_dataset']
