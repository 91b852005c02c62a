"""One dataclass per workflow; the same names are CLI flags, YAML keys and SDK keyword arguments."""
from lmforge.args.infer import InferArgs
from lmforge.args.misc import DemoArgs, DownloadArgs
from lmforge.args.parse import from_kwargs, parse_args, to_dict
from lmforge.args.train import PtArgs, SftArgs

__all__ = ['SftArgs', 'PtArgs', 'InferArgs', 'DownloadArgs', 'DemoArgs', 'parse_args', 'from_kwargs', 'to_dict']
