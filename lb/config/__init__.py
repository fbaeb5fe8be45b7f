"""Configuration: the model (:mod:`lb.config.model`) and its loader (:mod:`lb.config.loader`).

This package imports no trio, httpx or prometheus_client: it is plain data and validation,
usable by the engine, the simulator and ``tunnel-lb check`` alike.

Besides the loader, the line-tracking reader and the generic dataclass parser are public here,
for other files of ours that are YAML with the same error style (simulation scenarios).
"""

from lb.config._parse import INVALID as INVALID
from lb.config._parse import Parser as Parser
from lb.config._reference import markdown_reference as markdown_reference
from lb.config._report import Report as Report
from lb.config._report import did_you_mean as did_you_mean
from lb.config._source import Node as Node
from lb.config._source import Segment as Segment
from lb.config._source import Where as Where
from lb.config._source import read_file as read_file
from lb.config._source import read_text as read_text
from lb.config.errors import ConfigError as ConfigError
from lb.config.errors import Problem as Problem
from lb.config.loader import LoadResult as LoadResult
from lb.config.loader import load_config as load_config
from lb.config.loader import load_config_node as load_config_node
from lb.config.loader import load_config_text as load_config_text
from lb.config.model import Config as Config

__all__ = [
    "INVALID",
    "Config",
    "ConfigError",
    "LoadResult",
    "Node",
    "Parser",
    "Problem",
    "Report",
    "Segment",
    "Where",
    "did_you_mean",
    "load_config",
    "load_config_node",
    "load_config_text",
    "markdown_reference",
    "read_file",
    "read_text",
]
